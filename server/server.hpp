// SPDX-License-Identifier: MIT
// The ivshmem server: one epoll loop over the listening sockets, the clients
// and a signalfd. Speaks QEMU's ivshmem server protocol (docs/server.md).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fd.hpp"
#include "options.hpp"

namespace ivshmfs::server {

class Server {
 public:
  // Opens the shared memory, the sockets and the signalfd (SIGTERM, SIGINT
  // are blocked from here on). Throws std::runtime_error with a message that
  // names what failed.
  explicit Server(Options options);
  // Closes every connection and removes the socket files this server made.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until SIGTERM or SIGINT; returns the exit status (0).
  int run();

 private:
  using Clock = std::chrono::steady_clock;
  using SharedFd = std::shared_ptr<const UniqueFd>;

  struct Listener {
    UniqueFd fd;
    std::string path;
    std::optional<int> pinned_id;  // empty: the shared socket
    std::string name;              // the pinned peer's name
    dev_t dev = 0;
    ino_t ino = 0;
  };

  // One protocol message: a little-endian int64, maybe with a descriptor.
  struct Message {
    std::int64_t value = 0;
    SharedFd fd;
  };

  struct Client {
    UniqueFd sock;
    int id = 0;
    std::string label;  // for log lines: "peer 3 (vm1, pid 42)"
    std::vector<SharedFd> eventfds;
    std::deque<Message> out;
    std::size_t out_offset = 0;  // bytes of out.front() already sent
    std::optional<Clock::time_point> stalled_since;
    bool polling_out = false;
  };

  void open_listener(const std::string& path, std::optional<int> pinned_id, const std::string& name);
  void accept_clients(Listener& listener);
  void serve_client(std::uint64_t token, std::uint32_t events);
  // Sends what the client's queue holds until the socket is full. False when
  // the connection failed (the caller drops the client).
  bool flush(std::uint64_t token, Client& client);
  void enqueue(std::uint64_t token, Client& client, Message message);
  // Drops the client now (if it still exists) and tells the others.
  void drop(std::uint64_t token, const std::string& reason);
  void drop_pending();
  void reap_closed();
  void drop_stalled(Clock::time_point now);
  std::optional<int> free_shared_id() const;
  void set_polling_out(Client& client, std::uint64_t token, bool on);

  Options options_;
  SharedFd shm_;
  UniqueFd epoll_;
  UniqueFd signals_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::map<std::uint64_t, Client> clients_;  // by epoll token
  std::map<int, std::uint64_t> tokens_by_id_;
  std::vector<std::pair<std::uint64_t, std::string>> pending_drops_;
  std::uint64_t next_token_;
  std::size_t max_queue_;
};

}  // namespace ivshmfs::server
