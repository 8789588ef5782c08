// SPDX-License-Identifier: MIT
// A client of the ivshmem server protocol (QEMU's docs/specs/ivshmem-spec,
// docs/server.md): how a daemon on the host joins ivshm-server as a peer, so
// guests (ivshmem-doorbell) and other host peers ring it and it rings them.
//
// connect() reads the set-up: version 0, the own id, the shared memory file
// (-1 with a descriptor), the other peers' eventfds (vector 0, 1, ... of
// each) and the own eventfds, and returns once it has the own vector 0.
// After that the server sends connect notices (a peer id with an eventfd)
// and disconnect notices (a peer id alone); the owner of the client calls
// service() when socket() polls readable. Only vector 0 ("a partition
// changed") is kept; the descriptors of other vectors are closed.
//
// The server may go away (EOF), or send what the protocol does not allow:
// service() then logs why, closes the socket and returns false; the eventfds
// already held keep working (peers that hold ours still ring us), but no
// new peer is learned of.
//
// In fs/, not in the library: the connection is the daemon's runtime state
// (a socket to service, peers coming and going), while the library's doorbell
// seam (Backend::open_doorbell/ring) is about the region's device. The
// library's facts it needs are the backends' files, which it checks the
// server's shared memory against (same_file_as).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ivshmfs/error.hpp"

namespace ivshmfs::fs {

class ServerClient {
 public:
  static constexpr std::chrono::milliseconds kSetupTimeout{5000};
  static constexpr int64_t kMaxId = 65535;

  // Connects to the Unix socket `path` and reads the set-up (at most
  // `timeout` in all). Errors name the socket and what went wrong.
  static Result<std::unique_ptr<ServerClient>> connect(const std::string& path,
                                                       std::chrono::milliseconds timeout = kSetupTimeout);

  ServerClient(const ServerClient&) = delete;
  ServerClient& operator=(const ServerClient&) = delete;
  ~ServerClient();

  [[nodiscard]] uint32_t id() const noexcept { return id_; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  // Whether the server's shared memory is the file `paths` (or one of them:
  // the pieces of a split region) names: same st_dev and st_ino. The error
  // names the server's file and every path.
  [[nodiscard]] Result<void> same_file_as(const std::vector<std::string>& paths) const;
  // Polls readable when a peer rang our vector 0; read 8 bytes to clear it.
  [[nodiscard]] int own_vector0() const noexcept { return own_vector0_; }
  // The socket to poll for notices; -1 once the connection ended.
  [[nodiscard]] int socket() const noexcept { return connected_.load(std::memory_order_acquire) ? socket_ : -1; }
  [[nodiscard]] bool connected() const noexcept { return connected_.load(std::memory_order_acquire); }
  // Why the connection ended ("" while connected).
  [[nodiscard]] std::string lost_reason() const;

  // Reads every message the server sent (non-blocking). False once the
  // connection ended (now or before); the reason is logged once.
  bool service() noexcept;
  // Rings vector 0 of peer `peer` (writes 1 to its eventfd). False when no
  // eventfd is known for it. Any thread.
  bool ring(uint32_t peer) noexcept;
  // Whether an eventfd for peer `peer` is held (it joined and did not leave).
  [[nodiscard]] bool has_peer(uint32_t peer) const noexcept;
  // The peers we can ring, ascending.
  [[nodiscard]] std::vector<uint32_t> peers() const;
  // Connect and disconnect notices received since the set-up.
  [[nodiscard]] uint64_t joins() const noexcept { return joins_.load(std::memory_order_relaxed); }
  [[nodiscard]] uint64_t leaves() const noexcept { return leaves_.load(std::memory_order_relaxed); }

 private:
  ServerClient() = default;

  // One message: the number and the descriptor that came with it (-1: none).
  struct Message {
    int64_t value = 0;
    int fd = -1;
  };
  enum class ReadOutcome { message, would_block, closed, error };
  // Reads at most one message; partial ones are kept for the next call.
  ReadOutcome read_message(Message& out, std::string& why) noexcept;
  // Applies a message after the shared memory: a peer's or the own eventfd,
  // or a disconnect notice. False (with why) for a protocol error.
  bool apply(const Message& m, std::string& why) noexcept;
  void lose(const std::string& why) noexcept;

  std::string path_;
  int socket_ = -1;
  uint32_t id_ = 0;
  int shm_fd_ = -1;
  int own_vector0_ = -1;
  uint32_t own_vectors_ = 0;
  // Partial message bytes (a stream socket may split one) and its descriptor.
  unsigned char partial_[8]{};
  std::size_t partial_size_ = 0;
  int partial_fd_ = -1;

  struct Peer {
    int vector0 = -1;
    uint32_t vectors = 0;  // descriptors received since it joined
  };
  mutable std::mutex peers_mutex_;  // ring() runs on any thread
  std::map<uint32_t, Peer> peers_;
  std::atomic<bool> connected_{false};
  mutable std::mutex lost_mutex_;
  std::string lost_reason_;
  std::atomic<uint64_t> joins_{0};
  std::atomic<uint64_t> leaves_{0};
};

}  // namespace ivshmfs::fs
