// SPDX-License-Identifier: MIT
#include "server_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <limits>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

namespace ivshmfs::fs {

namespace {

void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

std::string describe_fd(int fd) {
  std::array<char, 4096> target{};
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target.data(), target.size() - 1);
  return n > 0 ? std::string(target.data(), static_cast<std::size_t>(n)) : std::string("descriptor");
}

std::string file_id(const struct stat& st) {
  return fmt::format("device {}:{} inode {}", major(st.st_dev), minor(st.st_dev), st.st_ino);
}

// At most this many descriptors are taken from one message; the protocol
// allows one, the others are closed and the message refused.
constexpr std::size_t kMaxFds = 4;

}  // namespace

Result<std::unique_ptr<ServerClient>> ServerClient::connect(const std::string& path,
                                                            std::chrono::milliseconds timeout) {
  std::unique_ptr<ServerClient> client(new ServerClient());
  client->path_ = path;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address.sun_path) {
    return make_error(Errc::invalid_argument, "ivshm-server socket '" + path + "': not a usable socket path (1 to " +
                                                  std::to_string(sizeof address.sun_path - 1) + " bytes)");
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  client->socket_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (client->socket_ < 0) return make_sys_error("ivshm-server socket " + path + ": socket");
  int r = 0;
  do {
    r = ::connect(client->socket_, reinterpret_cast<const sockaddr*>(&address), sizeof address);
  } while (r != 0 && errno == EINTR);
  if (r != 0) return make_sys_error("ivshm-server socket " + path + ": connect");
  const int flags = ::fcntl(client->socket_, F_GETFL);
  if (flags < 0 || ::fcntl(client->socket_, F_SETFL, flags | O_NONBLOCK) != 0) {
    return make_sys_error("ivshm-server socket " + path + ": fcntl");
  }
  client->connected_.store(true, std::memory_order_release);

  // The set-up: version, own id, -1 with the shared memory, then eventfds
  // until the own vector 0 has come.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int stage = 0;  // 0: version, 1: id, 2: shared memory, 3: eventfds
  const auto fail = [&](const std::string& why) {
    return make_error(Errc::io_error, "ivshm-server socket " + path + ": " + why);
  };
  while (stage < 3 || client->own_vector0_ < 0) {
    Message m;
    std::string why;
    const ReadOutcome outcome = client->read_message(m, why);
    if (outcome == ReadOutcome::would_block) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return fail(
            fmt::format("no complete set-up from the server within {} ms (is it an ivshmem server?)", timeout.count()));
      }
      pollfd p{client->socket_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) return make_sys_error("poll");
      continue;
    }
    if (outcome == ReadOutcome::closed) {
      return fail(stage == 0 ? "the server closed the connection at once (no free id, or too many clients? see its log)"
                             : "the server closed the connection during the set-up");
    }
    if (outcome == ReadOutcome::error) return fail(why);
    if (stage == 0) {
      close_fd(m.fd);
      if (m.value != 0 || m.fd >= 0) {
        return fail(fmt::format("protocol version {}{}; only version 0 is known", m.value,
                                m.fd >= 0 ? " (with a descriptor)" : ""));
      }
      stage = 1;
    } else if (stage == 1) {
      close_fd(m.fd);
      if (m.value < 0 || m.value > kMaxId || m.fd >= 0) {
        return fail(fmt::format("the id message holds {}{}, not an id 0 to {}", m.value,
                                m.fd >= 0 ? " with a descriptor" : "", kMaxId));
      }
      client->id_ = static_cast<uint32_t>(m.value);
      stage = 2;
    } else if (stage == 2) {
      if (m.value != -1 || m.fd < 0) {
        close_fd(m.fd);
        return fail(fmt::format("expected -1 with the shared memory's descriptor, got {}{}", m.value,
                                m.fd >= 0 ? " with a descriptor" : " without a descriptor"));
      }
      client->shm_fd_ = m.fd;
      stage = 3;
    } else if (!client->apply(m, why)) {
      return fail(why);
    }
  }
  return client;
}

ServerClient::~ServerClient() {
  close_fd(socket_);
  close_fd(shm_fd_);
  close_fd(own_vector0_);
  close_fd(partial_fd_);
  for (auto& [id, peer] : peers_) close_fd(peer.vector0);
}

ServerClient::ReadOutcome ServerClient::read_message(Message& out, std::string& why) noexcept {
  while (true) {
    iovec iov{partial_ + partial_size_, sizeof partial_ - partial_size_};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * kMaxFds)> control{};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(socket_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return ReadOutcome::would_block;
      why = std::string("recvmsg: ") + std::strerror(errno);
      return ReadOutcome::error;
    }
    std::size_t fds = 0;
    bool extra = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        if (partial_fd_ < 0 && fds == 0) {
          partial_fd_ = fd;
        } else {
          close_fd(fd);
          extra = true;
        }
        ++fds;
      }
    }
    if (extra || (msg.msg_flags & MSG_CTRUNC) != 0) {
      why = "a message came with more than one descriptor";
      return ReadOutcome::error;
    }
    if (n == 0) return ReadOutcome::closed;
    partial_size_ += static_cast<std::size_t>(n);
    if (partial_size_ < sizeof partial_) continue;
    // Little-endian signed 64-bit, whatever this machine's byte order.
    uint64_t raw = 0;
    for (std::size_t i = 0; i < sizeof partial_; ++i) raw |= uint64_t{partial_[i]} << (8 * i);
    out.value = static_cast<int64_t>(raw);
    out.fd = partial_fd_;
    partial_fd_ = -1;
    partial_size_ = 0;
    return ReadOutcome::message;
  }
}

bool ServerClient::apply(const Message& m, std::string& why) noexcept {
  if (m.value < 0 || m.value > kMaxId) {
    close_fd(m.fd);
    why = fmt::format("a notice for id {}, not an id 0 to {}", m.value, kMaxId);
    return false;
  }
  const auto peer = static_cast<uint32_t>(m.value);
  if (peer == id_) {
    if (m.fd < 0) {
      why = "a disconnect notice for our own id";
      return false;
    }
    // The own eventfds, vector 0 first: peers ring vector 0.
    if (own_vector0_ < 0) {
      // Read only after poll() said readable, but a server whose eventfds
      // block must not stall us on a spurious wake-up either.
      const int flags = ::fcntl(m.fd, F_GETFL);
      if (flags >= 0) ::fcntl(m.fd, F_SETFL, flags | O_NONBLOCK);
      own_vector0_ = m.fd;
    } else {
      close_fd(m.fd);
    }
    ++own_vectors_;
    return true;
  }
  std::lock_guard lock(peers_mutex_);
  if (m.fd >= 0) {
    Peer& p = peers_[peer];
    if (p.vectors == 0) {
      p.vector0 = m.fd;
      joins_.fetch_add(1, std::memory_order_relaxed);
      spdlog::info("ivshm-server: peer {} joined", peer);
    } else {
      close_fd(m.fd);
    }
    ++p.vectors;
    return true;
  }
  auto it = peers_.find(peer);
  if (it != peers_.end()) {
    close_fd(it->second.vector0);
    peers_.erase(it);
    leaves_.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("ivshm-server: peer {} left", peer);
  }
  return true;
}

void ServerClient::lose(const std::string& why) noexcept {
  {
    std::lock_guard lock(lost_mutex_);
    if (!lost_reason_.empty()) return;
    lost_reason_ = why;
  }
  connected_.store(false, std::memory_order_release);
  // The spec's rule on an error: close the connection. The socket is the
  // source thread's only (socket() is -1 from now on).
  ::close(socket_);
  socket_ = -1;
  spdlog::warn(
      "ivshm-server {}: {}; wake-ups fall back: partitions readers wait for are polled (the eventfds held stay "
      "rung, but no new peer is learned of)",
      path_, why);
}

std::string ServerClient::lost_reason() const {
  std::lock_guard lock(lost_mutex_);
  return lost_reason_;
}

bool ServerClient::service() noexcept {
  if (!connected()) return false;
  while (true) {
    Message m;
    std::string why;
    switch (read_message(m, why)) {
      case ReadOutcome::would_block: return true;
      case ReadOutcome::closed: lose("the server closed the connection"); return false;
      case ReadOutcome::error: lose("protocol error: " + why); return false;
      case ReadOutcome::message:
        if (!apply(m, why)) {
          lose("protocol error: " + why);
          return false;
        }
        break;
    }
  }
}

bool ServerClient::ring(uint32_t peer) noexcept {
  std::lock_guard lock(peers_mutex_);
  auto it = peers_.find(peer);
  if (it == peers_.end()) return false;
  const uint64_t one = 1;
  if (::write(it->second.vector0, &one, sizeof one) < 0 && errno != EAGAIN) {
    // EAGAIN: its counter is full, it has been rung already.
    spdlog::warn("ivshm-server: ringing peer {}: {}", peer, std::strerror(errno));
    return false;
  }
  return true;
}

bool ServerClient::has_peer(uint32_t peer) const noexcept {
  std::lock_guard lock(peers_mutex_);
  return peers_.contains(peer);
}

std::vector<uint32_t> ServerClient::peers() const {
  std::lock_guard lock(peers_mutex_);
  std::vector<uint32_t> ids;
  ids.reserve(peers_.size());
  for (const auto& [id, peer] : peers_) ids.push_back(id);
  return ids;
}

Result<void> ServerClient::same_file_as(const std::vector<std::string>& paths) const {
  struct stat shm {};
  if (::fstat(shm_fd_, &shm) != 0) return make_sys_error("ivshm-server's shared memory: fstat");
  std::string ours;
  for (const std::string& p : paths) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return make_sys_error(p);
    if (st.st_dev == shm.st_dev && st.st_ino == shm.st_ino) return {};
    ours += (ours.empty() ? "" : ", ") + p + " (" + file_id(st) + ")";
  }
  return make_error(Errc::invalid_argument,
                    fmt::format("ivshm-server {} shares {} ({}), not this region's {}: peers that ring us would "
                                "not see our data; start the server with --shm on the region's file",
                                path_, describe_fd(shm_fd_), file_id(shm), ours));
}

}  // namespace ivshmfs::fs
