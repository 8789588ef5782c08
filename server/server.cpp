// SPDX-License-Identifier: MIT
#include "server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string_view>
#include <utility>

#include <spdlog/spdlog.h>

namespace ivshmfs::server {

namespace {

// epoll tokens: 0 is the signalfd, 1..listeners are the sockets, clients
// count up from kFirstClientToken and are never reused, so an event for a
// client dropped earlier in the same batch finds nothing.
constexpr std::uint64_t kSignalToken = 0;
constexpr std::uint64_t kFirstClientToken = 1ULL << 32;

std::runtime_error sys_error(const std::string& what) { return std::runtime_error(what + ": " + std::strerror(errno)); }

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);  // length checked by the options
  return addr;
}

// Something is listening on PATH (a running server): connecting succeeds.
bool socket_is_live(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return false;
  const sockaddr_un addr = unix_address(path);
  return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

// The descriptors the server may hold: each client's socket and eventfds,
// the listeners, epoll, signalfd, the shared memory, stdio and some slack.
void ensure_descriptor_limit(const Options& o) {
  const auto needed = static_cast<rlim_t>(o.max_clients) * static_cast<rlim_t>(1 + o.vectors) +
                      static_cast<rlim_t>(o.pinned.size()) + 64;
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) throw sys_error("getrlimit(RLIMIT_NOFILE)");
  if (lim.rlim_cur >= needed) return;
  if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < needed) {
    throw std::runtime_error("--max-clients " + std::to_string(o.max_clients) + " with --vectors " +
                             std::to_string(o.vectors) + " needs " + std::to_string(needed) +
                             " file descriptors; the hard limit is " + std::to_string(lim.rlim_max));
  }
  lim.rlim_cur = needed;
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) throw sys_error("setrlimit(RLIMIT_NOFILE)");
}

// The name QEMU was started with (-name NAME, -name NAME,process=..., or
// libvirt's -name guest=NAME,debug-threads=on), read from the connecting
// process's command line; empty when there is none or it cannot be read.
std::string qemu_name(pid_t pid) {
  if (pid <= 0) return {};
  std::ifstream file("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string arg; std::getline(file, arg, '\0');) args.push_back(arg);
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] != "-name" && args[i] != "--name") continue;
    std::string_view value = args[i + 1];
    for (bool first = true; !value.empty(); first = false) {
      const auto comma = value.find(',');
      const std::string_view part = value.substr(0, comma);
      if (part.starts_with("guest=")) return std::string(part.substr(6));
      if (first && part.find('=') == std::string_view::npos) return std::string(part);
      if (comma == std::string_view::npos) break;
      value.remove_prefix(comma + 1);
    }
  }
  return {};
}

}  // namespace

Server::Server(Options options)
    : options_(std::move(options)),
      next_token_(kFirstClientToken),
      // Enough for a newcomer's whole set-up (every peer's eventfds) plus a
      // join and a leave of every other client; a client further behind is
      // not reading and is dropped.
      max_queue_(static_cast<std::size_t>(options_.max_clients + 2) * static_cast<std::size_t>(options_.vectors + 1) *
                     2 +
                 64) {
  ensure_descriptor_limit(options_);
  const int shm = ::open(options_.shm_path.c_str(), O_RDWR | O_CLOEXEC);
  if (shm < 0) throw sys_error("cannot open --shm '" + options_.shm_path + "'");
  shm_ = std::make_shared<const UniqueFd>(shm);

  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_.valid()) throw sys_error("epoll_create1");

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) throw sys_error("sigprocmask");
  std::signal(SIGPIPE, SIG_IGN);
  signals_.reset(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signals_.valid()) throw sys_error("signalfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kSignalToken;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, signals_.get(), &ev) != 0) throw sys_error("epoll_ctl(signalfd)");

  if (!options_.socket_path.empty()) open_listener(options_.socket_path, std::nullopt, "");
  for (const auto& p : options_.pinned) {
    if (!p.socket_path.empty()) {
      open_listener(p.socket_path, p.id, p.name);
    } else {
      spdlog::info("id {} is for the QEMU named {} on the shared socket", p.id, p.name);
    }
  }
}

Server::~Server() {
  clients_.clear();
  for (const auto& l : listeners_) {
    // Remove the file only if it is still the socket this server bound (a
    // second server started by mistake must not lose its socket to us).
    struct stat st {};
    if (::lstat(l->path.c_str(), &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino) {
      ::unlink(l->path.c_str());
    }
  }
}

void Server::open_listener(const std::string& path, std::optional<int> pinned_id, const std::string& name) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw std::runtime_error("socket path '" + path + "' exists and is not a socket");
    if (socket_is_live(path)) throw std::runtime_error("another server is listening on '" + path + "'");
    spdlog::info("removing the stale socket {}", path);
    ::unlink(path.c_str());
  }
  // The socket's directory (e.g. /run/ivshm): create the last component if
  // it is missing; systemd's RuntimeDirectory= makes it for the unit.
  const auto slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw sys_error("cannot create directory '" + dir + "'");
  }
  auto l = std::make_unique<Listener>();
  l->fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!l->fd.valid()) throw sys_error("socket");
  const sockaddr_un addr = unix_address(path);
  if (::bind(l->fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    throw sys_error("cannot bind '" + path + "'");
  }
  l->path = path;
  if (::lstat(path.c_str(), &st) == 0) {
    l->dev = st.st_dev;
    l->ino = st.st_ino;
  }
  l->pinned_id = pinned_id;
  l->name = name;
  // Registered before anything else can fail, so the destructor removes it.
  listeners_.push_back(std::move(l));
  Listener& lr = *listeners_.back();
  if (::chmod(path.c_str(), options_.socket_mode) != 0) throw sys_error("chmod '" + path + "'");
  if (::listen(lr.fd.get(), 128) != 0) throw sys_error("listen on '" + path + "'");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = listeners_.size();  // 1-based index
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, lr.fd.get(), &ev) != 0) throw sys_error("epoll_ctl(listener)");
  if (pinned_id) {
    spdlog::info("listening on {} for {} (id {})", path, name, *pinned_id);
  } else {
    spdlog::info("listening on {} (lowest free id)", path);
  }
}

std::optional<int> Server::free_shared_id() const {
  auto pinned = [this](int id) {
    for (const auto& p : options_.pinned) {
      if (p.id == id) return true;
    }
    return false;
  };
  for (int id = 0; id <= kMaxPeerId; ++id) {
    if (!tokens_by_id_.contains(id) && !pinned(id)) return id;
  }
  return std::nullopt;
}

int Server::run() {
  spdlog::info("serving {} ({} vectors per peer, at most {} clients)", options_.shm_path, options_.vectors,
               options_.max_clients);
  std::array<epoll_event, 64> events{};
  for (;;) {
    bool any_stalled = false;
    for (const auto& [token, c] : clients_) any_stalled = any_stalled || c.stalled_since.has_value();
    // A stalled client is checked against --send-timeout every 200 ms (and
    // retried, for the case where no EPOLLOUT comes: ETOOMANYREFS).
    const int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), any_stalled ? 200 : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      const std::uint64_t token = events[i].data.u64;
      if (token == kSignalToken) {
        signalfd_siginfo si{};
        if (::read(signals_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
          spdlog::info("{}: closing {} connection(s), removing the sockets",
                       ::strsignal(static_cast<int>(si.ssi_signo)), clients_.size());
          return 0;
        }
      } else if (token < kFirstClientToken) {
        accept_clients(*listeners_.at(token - 1));
      } else {
        serve_client(token, events[i].events);
      }
      drop_pending();
    }
    if (any_stalled) {
      for (auto& [token, c] : clients_) {
        if (c.stalled_since && !flush(token, c)) pending_drops_.emplace_back(token, "connection failed");
      }
      drop_pending();
      drop_stalled(Clock::now());
    }
  }
}

void Server::accept_clients(Listener& listener) {
  for (;;) {
    UniqueFd sock(::accept4(listener.fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!sock.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        spdlog::error("accept on {}: {}", listener.path, std::strerror(errno));
      return;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    std::string who = "pid ?";
    if (::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      who = "pid " + std::to_string(cred.pid) + ", uid " + std::to_string(cred.uid);
    }

    std::optional<int> pinned_id = listener.pinned_id;
    std::string name = listener.name;
    if (!pinned_id && !options_.pinned.empty()) {
      // On the shared socket, a QEMU whose -name is a pinned peer's gets its id.
      const std::string qemu = qemu_name(cred.pid);
      for (const auto& p : options_.pinned) {
        if (!qemu.empty() && p.name == qemu) {
          pinned_id = p.id;
          name = p.name;
        }
      }
    }
    int id = 0;
    if (pinned_id) {
      id = *pinned_id;
      if (auto it = tokens_by_id_.find(id); it != tokens_by_id_.end()) {
        // QEMU restarted (the old process may linger) or a migration's
        // destination connects while the source still runs: the newest
        // connection is the one that wants the id.
        drop(it->second, "replaced by a new connection on " + listener.path);
      }
    } else {
      const auto free_id = free_shared_id();
      if (!free_id) {
        spdlog::warn("refusing a connection on {} ({}): no free id", listener.path, who);
        continue;
      }
      id = *free_id;
    }
    if (clients_.size() >= static_cast<std::size_t>(options_.max_clients)) reap_closed();
    if (clients_.size() >= static_cast<std::size_t>(options_.max_clients)) {
      spdlog::warn("refusing a connection on {} ({}): {} clients already (--max-clients)", listener.path, who,
                   clients_.size());
      continue;
    }

    Client c;
    c.sock = std::move(sock);
    c.id = id;
    c.label = "peer " + std::to_string(id) + " (" + (name.empty() ? "" : name + ", ") + who + ")";
    bool ok = true;
    for (int v = 0; v < options_.vectors; ++v) {
      const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (efd < 0) {
        spdlog::error("refusing {}: eventfd: {}", c.label, std::strerror(errno));
        ok = false;
        break;
      }
      c.eventfds.push_back(std::make_shared<const UniqueFd>(efd));
    }
    if (!ok) continue;

    const std::uint64_t token = next_token_++;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = token;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.sock.get(), &ev) != 0) {
      spdlog::error("refusing {}: epoll_ctl: {}", c.label, std::strerror(errno));
      continue;
    }
    // The set-up, in the order of QEMU's ivshmem-spec: version, id, shared
    // memory, the other peers' eventfds, then the client's own.
    c.out.push_back({0, nullptr});
    c.out.push_back({id, nullptr});
    c.out.push_back({-1, shm_});
    for (const auto& [other_id, other_token] : tokens_by_id_) {
      for (const auto& efd : clients_.at(other_token).eventfds) c.out.push_back({other_id, efd});
    }
    for (const auto& efd : c.eventfds) c.out.push_back({id, efd});
    // Announce the newcomer to everyone else.
    for (auto& [other_token, other] : clients_) {
      for (const auto& efd : c.eventfds) enqueue(other_token, other, {id, efd});
    }
    spdlog::info("{} connected on {}; {} peer(s) now", c.label, listener.path, clients_.size() + 1);
    auto [it, inserted] = clients_.emplace(token, std::move(c));
    tokens_by_id_[id] = token;
    if (!flush(token, it->second)) pending_drops_.emplace_back(token, "connection failed during set-up");
  }
}

void Server::enqueue(std::uint64_t token, Client& client, Message message) {
  client.out.push_back(std::move(message));
  if (client.out.size() > max_queue_) {
    pending_drops_.emplace_back(token, std::to_string(client.out.size()) + " messages not read");
    return;
  }
  if (!flush(token, client)) pending_drops_.emplace_back(token, "connection failed");
}

bool Server::flush(std::uint64_t token, Client& client) {
  while (!client.out.empty()) {
    const Message& m = client.out.front();
    std::array<unsigned char, 8> bytes{};
    auto v = static_cast<std::uint64_t>(m.value);
    for (auto& b : bytes) {  // little-endian, whatever the host
      b = static_cast<unsigned char>(v & 0xff);
      v >>= 8;
    }
    iovec iov{bytes.data() + client.out_offset, bytes.size() - client.out_offset};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    if (m.fd && client.out_offset == 0) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      const int fd = m.fd->get();
      std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    const ssize_t sent = ::sendmsg(client.sock.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETOOMANYREFS) {
        if (!client.stalled_since) client.stalled_since = Clock::now();
        // ETOOMANYREFS (too many descriptors in flight for a user without
        // CAP_SYS_RESOURCE) leaves the socket writable: EPOLLOUT would spin,
        // so only the 200 ms retry of stalled clients tries again.
        set_polling_out(client, token, errno != ETOOMANYREFS);
        return true;
      }
      spdlog::debug("{}: sendmsg: {}", client.label, std::strerror(errno));
      return false;
    }
    client.stalled_since.reset();
    client.out_offset += static_cast<std::size_t>(sent);
    if (client.out_offset == bytes.size()) {
      spdlog::debug("{}: sent {}{}", client.label, m.value, m.fd ? " with a descriptor" : "");
      client.out.pop_front();
      client.out_offset = 0;
    }
  }
  set_polling_out(client, token, false);
  return true;
}

void Server::set_polling_out(Client& client, std::uint64_t token, bool on) {
  if (client.polling_out == on) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0U);
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, client.sock.get(), &ev) == 0) client.polling_out = on;
}

void Server::serve_client(std::uint64_t token, std::uint32_t events) {
  auto it = clients_.find(token);
  if (it == clients_.end()) return;  // dropped earlier in this batch
  Client& c = it->second;
  if ((events & EPOLLIN) != 0) {
    std::array<char, 256> buf{};
    const ssize_t n = ::recv(c.sock.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n > 0) {
      // The protocol is one-way: QEMU never sends anything.
      pending_drops_.emplace_back(token, "sent " + std::to_string(n) + " byte(s); clients must not send");
      return;
    }
    if (n == 0) {
      pending_drops_.emplace_back(token, "disconnected");
      return;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      pending_drops_.emplace_back(token, std::string("disconnected: ") + std::strerror(errno));
      return;
    }
  }
  if ((events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0) {
    pending_drops_.emplace_back(token, "disconnected");
    return;
  }
  if ((events & EPOLLOUT) != 0 && !flush(token, c)) pending_drops_.emplace_back(token, "connection failed");
}

void Server::drop(std::uint64_t token, const std::string& reason) {
  auto it = clients_.find(token);
  if (it == clients_.end()) return;
  const int id = it->second.id;
  const std::string label = it->second.label;
  tokens_by_id_.erase(id);
  clients_.erase(it);  // closes the socket (leaving epoll) and our eventfd copies
  spdlog::info("{} dropped: {}; {} peer(s) now", label, reason, clients_.size());
  for (auto& [other_token, other] : clients_) enqueue(other_token, other, {id, nullptr});
}

void Server::reap_closed() {
  // Clients that hung up but whose events are still queued must not count
  // against --max-clients.
  std::vector<pollfd> fds;
  std::vector<std::uint64_t> tokens;
  for (const auto& [token, c] : clients_) {
    fds.push_back({c.sock.get(), POLLRDHUP, 0});
    tokens.push_back(token);
  }
  if (::poll(fds.data(), fds.size(), 0) <= 0) return;
  for (std::size_t i = 0; i < fds.size(); ++i) {
    if ((fds[i].revents & (POLLHUP | POLLERR | POLLRDHUP)) != 0) pending_drops_.emplace_back(tokens[i], "disconnected");
  }
  drop_pending();
}

void Server::drop_pending() {
  while (!pending_drops_.empty()) {
    auto [token, reason] = std::move(pending_drops_.back());
    pending_drops_.pop_back();
    drop(token, reason);
  }
}

void Server::drop_stalled(Clock::time_point now) {
  for (auto& [token, c] : clients_) {
    if (c.stalled_since && now - *c.stalled_since >= options_.send_timeout) {
      pending_drops_.emplace_back(
          token, "did not read for " +
                     std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.send_timeout).count()) +
                     " s");
    }
  }
  drop_pending();
}

}  // namespace ivshmfs::server
