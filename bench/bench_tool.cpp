// SPDX-License-Identifier: MIT
// The two-process and file-system parts of the benchmark, driven by
// scripts/bench/run.sh. Every command prints one CSV line (no header):
//
//   stream lib|unix|tcp SIZE TOTAL REPS
//       one process sends TOTAL bytes in SIZE-byte messages, another receives
//       them; REPS timed transfers after one warm-up.
//       -> stream_<kind>,SIZE,<median bytes/s>,<min>,<max>
//   latency lib|unix COUNT
//       lib: commit in one process -> seen by a busy-polling reader in another.
//       unix: half of a 64-byte round trip over a Unix stream socket.
//       -> latency_<kind>,64,<p50 ns>,<p99 ns>,<samples>
//   write PATH SIZE MAX_BYTES MAX_SECONDS [create]
//   read PATH SIZE MAX_BYTES MAX_SECONDS OFFSET
//       sequential write (appending) or pread from OFFSET, SIZE per call,
//       until MAX_BYTES, MAX_SECONDS or the end of the file.
//       -> <write|read>,SIZE,<bytes/s>,<ops/s>,<bytes>
//   follow-latency WRITE_PATH FOLLOW_PATH COUNT INTERVAL_US
//       a writer appends 64-byte stamped records to WRITE_PATH every
//       INTERVAL_US; a reader in another process blocks on FOLLOW_PATH.
//       -> latency_mount,64,<p50 ns>,<p99 ns>,<samples>
//
// Nothing here asserts a time: the driver compares figures.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_tool: %s%s%s\n", what.c_str(), errno != 0 ? ": " : "",
               errno != 0 ? std::strerror(errno) : "");
  std::exit(1);
}

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t parse_u64(const char* text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    errno = 0;
    die(std::string("not a number: ") + text);
  }
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 != 0 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t percentile(std::vector<uint64_t>& v, double p) {
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Page-aligned buffer (O_DIRECT wants alignment).
struct Buffer {
  std::byte* p = nullptr;
  std::size_t n = 0;
  explicit Buffer(std::size_t size) : n(std::max<std::size_t>(size, 1)) {
    void* q = nullptr;
    if (posix_memalign(&q, 4096, n) != 0) die("posix_memalign");
    p = static_cast<std::byte*>(q);
    std::memset(p, 0x61, n);
  }
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

void write_all(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("write");
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void read_all(int fd, void* data, std::size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("read");
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

char recv_cmd(int fd) {
  char c = 0;
  read_all(fd, &c, 1);
  return c;
}
void send_cmd(int fd, char c) { write_all(fd, &c, 1); }

void reap(pid_t child) {
  int status = 0;
  if (::waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    die("a child process failed");
  }
}

std::string shm_name(const char* what) {
  return "/dev/shm/ivshmfs-bench-" + std::string(what) + "-" + std::to_string(::getpid());
}

// ---- two-process streams ----------------------------------------------------

// The sender and receiver of one kind of channel. The sender runs in a child;
// the parent receives and times. Control goes over a pair of pipes:
// 'g' = send TOTAL bytes, 'r' = get ready for the next transfer, 'q' = quit.
struct Channel {
  virtual ~Channel() = default;
  virtual void child_setup() {}
  virtual void parent_setup() {}
  virtual void send(std::size_t size, uint64_t total) = 0;
  virtual void receive(std::size_t size, uint64_t total) = 0;
  virtual void prepare_next() {}  // in the child, after a transfer
};

struct LibChannel : Channel {
  std::string path = shm_name("stream");
  uint64_t capacity;
  std::shared_ptr<ivshmfs::Region> region;
  std::unique_ptr<ivshmfs::PartitionWriter> writer;

  explicit LibChannel(uint64_t total) : capacity((total + 4095) / 4096 * 4096) {
    ::unlink(path.c_str());
    ivshmfs::RegionOpenOptions o;
    o.create = true;
    o.writable = true;
    o.create_size = IVSHMFS_PAGE_SIZE + 2 * capacity;
    o.create_partitions = 2;
    auto r = ivshmfs::Region::open_path(path, o);
    if (!r) die(r.error().message);
    // Each process maps the region itself (after fork), as peers do.
  }
  ~LibChannel() override { ::unlink(path.c_str()); }
  void open_region() {
    ivshmfs::RegionOpenOptions o;
    o.writable = true;
    auto r = ivshmfs::Region::open_path(path, o);
    if (!r) die(r.error().message);
    region = *r;
  }
  void child_setup() override {
    open_region();
    auto w = ivshmfs::PartitionWriter::claim(region, 1);
    if (!w) die(w.error().message);
    writer = std::move(*w);
  }
  void parent_setup() override { open_region(); }
  void send(std::size_t size, uint64_t total) override {
    Buffer src(size);
    for (uint64_t done = 0; done < total;) {
      const auto n = static_cast<std::size_t>(std::min<uint64_t>(size, total - done));
      auto r = writer->append({src.p, n});
      if (!r) die(r.error().message);
      done += *r;
    }
  }
  void receive(std::size_t size, uint64_t total) override {
    Buffer dst(size);
    unsigned idle = 0;
    for (uint64_t got = 0; got < total;) {
      auto r = region->read(1, got, {dst.p, size});
      if (!r) die(r.error().message);
      got += *r;  // 0: nothing new yet; poll again
      // On a shared 2-core machine, a reader that never yields can starve
      // the writer it waits for.
      idle = *r == 0 ? idle + 1 : 0;
      if (idle > 256) ::sched_yield();
    }
  }
  void prepare_next() override {
    if (auto r = writer->reset(); !r) die(r.error().message);
  }
};

struct SocketChannel : Channel {
  int fds[2] = {-1, -1};  // [0] parent (receiver), [1] child (sender)
  void send(std::size_t size, uint64_t total) override {
    Buffer src(size);
    for (uint64_t done = 0; done < total;) {
      const auto n = static_cast<std::size_t>(std::min<uint64_t>(size, total - done));
      write_all(fds[1], src.p, n);
      done += n;
    }
  }
  void receive(std::size_t size, uint64_t total) override {
    Buffer dst(size);
    for (uint64_t got = 0; got < total;) {
      const ssize_t n = ::read(fds[0], dst.p, std::min<uint64_t>(size, total - got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("socket read");
      got += static_cast<uint64_t>(n);
    }
  }
  void child_setup() override { ::close(fds[0]); }
  void parent_setup() override { ::close(fds[1]); }
};

struct UnixChannel : SocketChannel {
  UnixChannel() {
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) die("socketpair");
  }
};

struct TcpChannel : SocketChannel {
  int listener = -1;
  sockaddr_in addr{};
  TcpChannel() {
    listener = ::socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  // 127.0.0.1 only
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener, 1) != 0 || ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      die("tcp listen on 127.0.0.1");
    }
  }
  static void nodelay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  void child_setup() override {
    ::close(listener);
    fds[1] = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fds[1] < 0 || ::connect(fds[1], reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("tcp connect");
    nodelay(fds[1]);
  }
  void parent_setup() override {
    fds[0] = ::accept(listener, nullptr, nullptr);
    if (fds[0] < 0) die("tcp accept");
    nodelay(fds[0]);
    ::close(listener);
  }
};

int cmd_stream(const std::string& kind, std::size_t size, uint64_t total, int reps) {
  std::unique_ptr<Channel> ch;
  if (kind == "lib") {
    ch = std::make_unique<LibChannel>(total);
  } else if (kind == "unix") {
    ch = std::make_unique<UnixChannel>();
  } else if (kind == "tcp") {
    ch = std::make_unique<TcpChannel>();
  } else {
    die("unknown stream kind " + kind);
  }
  int to_child[2];
  int to_parent[2];
  if (::pipe(to_child) != 0 || ::pipe(to_parent) != 0) die("pipe");
  const pid_t child = ::fork();
  if (child < 0) die("fork");
  if (child == 0) {
    ::close(to_child[1]);
    ::close(to_parent[0]);
    ch->child_setup();
    send_cmd(to_parent[1], 'k');
    for (;;) {
      const char c = recv_cmd(to_child[0]);
      if (c == 'q') break;
      if (c == 'g') ch->send(size, total);
      if (c == 'r') {
        ch->prepare_next();
        send_cmd(to_parent[1], 'k');
      }
    }
    std::_Exit(0);  // the parent owns (and removes) the channel's files
  }
  ::close(to_child[0]);
  ::close(to_parent[1]);
  ch->parent_setup();
  if (recv_cmd(to_parent[0]) != 'k') die("child not ready");
  std::vector<double> rates;
  for (int rep = -1; rep < reps; ++rep) {  // rep -1 warms up (and faults pages in)
    const uint64_t t0 = now_ns();
    send_cmd(to_child[1], 'g');
    ch->receive(size, total);
    const uint64_t t1 = now_ns();
    if (rep >= 0) rates.push_back(static_cast<double>(total) * 1e9 / static_cast<double>(t1 - t0));
    send_cmd(to_child[1], 'r');
    if (recv_cmd(to_parent[0]) != 'k') die("child not ready");
  }
  send_cmd(to_child[1], 'q');
  reap(child);
  std::printf("stream_%s,%zu,%.0f,%.0f,%.0f\n", kind.c_str(), size, median(rates),
              *std::min_element(rates.begin(), rates.end()), *std::max_element(rates.begin(), rates.end()));
  return 0;
}

// ---- latency ----------------------------------------------------------------

constexpr std::size_t kRecord = 64;

void print_latency(const char* kind, std::vector<uint64_t>& samples) {
  if (samples.empty()) die("no latency samples");
  const uint64_t p50 = percentile(samples, 0.50);
  const uint64_t p99 = percentile(samples, 0.99);
  std::printf("latency_%s,64,%llu,%llu,%zu\n", kind, static_cast<unsigned long long>(p50),
              static_cast<unsigned long long>(p99), samples.size());
}

void spin_until(uint64_t deadline) {
  while (now_ns() < deadline) {
  }
}

// Commit -> seen through the library: the child appends stamped 64-byte
// records, paced; the parent busy-polls Region::view on the committed length.
int cmd_latency_lib(uint64_t count) {
  const std::string path = shm_name("latency");
  ::unlink(path.c_str());
  ivshmfs::RegionOpenOptions o;
  o.create = true;
  o.writable = true;
  o.create_size = IVSHMFS_PAGE_SIZE + 2 * ((count * kRecord + 4095) / 4096 * 4096 + 4096);
  o.create_partitions = 2;
  auto created = ivshmfs::Region::open_path(path, o);
  if (!created) die(created.error().message);
  int ready[2];
  if (::pipe(ready) != 0) die("pipe");
  const pid_t child = ::fork();
  if (child < 0) die("fork");
  if (child == 0) {
    o.create = false;
    auto r = ivshmfs::Region::open_path(path, o);
    if (!r) die(r.error().message);
    auto w = ivshmfs::PartitionWriter::claim(*r, 1);
    if (!w) die(w.error().message);
    char go = 0;
    read_all(ready[0], &go, 1);
    std::byte record[kRecord] = {};
    uint64_t next = now_ns();
    for (uint64_t i = 0; i < count; ++i) {
      // One commit every 50 us. The writer sleeps in between rather than
      // spinning: on a shared 2-core machine two spinning processes get
      // preempted for whole time slices.
      next += 50'000;
      const uint64_t now = now_ns();
      if (next > now + 10'000) ::usleep(static_cast<useconds_t>((next - now) / 1000 - 5));
      spin_until(next);
      const uint64_t t = now_ns();
      std::memcpy(record, &t, sizeof t);
      if (auto n = (*w)->append(record); !n) die(n.error().message);
    }
    std::_Exit(0);
  }
  o.create = false;
  o.writable = false;
  auto r = ivshmfs::Region::open_path(path, o);
  if (!r) die(r.error().message);
  const auto& region = **r;
  std::vector<uint64_t> samples;
  samples.reserve(count);
  send_cmd(ready[1], 'g');
  uint64_t seen = 0;
  const uint64_t end = count * kRecord;
  while (seen < end) {
    auto v = region.view(1, seen, end - seen);
    if (!v) die(v.error().message);
    if (v->bytes.empty()) continue;
    const uint64_t t = now_ns();
    for (std::size_t i = 0; i + kRecord <= v->bytes.size(); i += kRecord) {
      uint64_t stamp = 0;
      std::memcpy(&stamp, v->bytes.data() + i, sizeof stamp);
      samples.push_back(t - stamp);
    }
    seen += v->bytes.size();
  }
  reap(child);
  ::unlink(path.c_str());
  print_latency("lib", samples);
  return 0;
}

int cmd_latency_unix(uint64_t count) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) die("socketpair");
  const pid_t child = ::fork();
  if (child < 0) die("fork");
  std::byte msg[kRecord] = {};
  if (child == 0) {
    ::close(fds[0]);
    for (uint64_t i = 0; i < count + 100; ++i) {
      read_all(fds[1], msg, sizeof msg);
      write_all(fds[1], msg, sizeof msg);
    }
    std::_Exit(0);
  }
  ::close(fds[1]);
  std::vector<uint64_t> samples;
  samples.reserve(count);
  for (uint64_t i = 0; i < count + 100; ++i) {  // the first 100 warm up
    const uint64_t t0 = now_ns();
    write_all(fds[0], msg, sizeof msg);
    read_all(fds[0], msg, sizeof msg);
    const uint64_t t1 = now_ns();
    if (i >= 100) samples.push_back((t1 - t0) / 2);
  }
  reap(child);
  print_latency("unix", samples);
  return 0;
}

// ---- file I/O ---------------------------------------------------------------

// Calls `io` (one request of `size` bytes, returning its result) until
// max_bytes moved, max_seconds passed or it returns 0, and prints
// "<label>,<size>,<bytes/s>,<ops/s>,<bytes>".
template <class Io>
void timed_requests(const char* label, const char* path, std::size_t size, uint64_t max_bytes, double max_seconds,
                    Io io) {
  uint64_t done = 0;
  uint64_t ops = 0;
  const uint64_t t0 = now_ns();
  const auto limit = static_cast<uint64_t>(max_seconds * 1e9);
  uint64_t t = t0;
  while (done < max_bytes && t - t0 < limit) {
    const ssize_t n = io(done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die(std::string(label) + " " + path);
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
    ++ops;
    t = now_ns();
  }
  const double secs = std::max(static_cast<double>(t - t0) / 1e9, 1e-9);
  std::printf("%s,%zu,%.0f,%.0f,%llu\n", label, size, static_cast<double>(done) / secs, static_cast<double>(ops) / secs,
              static_cast<unsigned long long>(done));
}

int cmd_write(const char* path, std::size_t size, uint64_t max_bytes, double max_seconds, bool create) {
  const int fd = ::open(path, O_WRONLY | O_APPEND | (create ? O_CREAT | O_TRUNC : 0), 0644);
  if (fd < 0) die(std::string("open ") + path);
  Buffer src(size);
  timed_requests("write", path, size, max_bytes, max_seconds, [&](uint64_t) {
    const ssize_t n = ::write(fd, src.p, size);
    if (n == 0) die(std::string("write ") + path + ": wrote nothing");
    return n;
  });
  ::close(fd);
  return 0;
}

int cmd_read(const char* path, std::size_t size, uint64_t max_bytes, double max_seconds, uint64_t offset) {
  const int fd = ::open(path, O_RDONLY);
  if (fd < 0) die(std::string("open ") + path);
  Buffer dst(size);
  timed_requests("read", path, size, max_bytes, max_seconds,
                 [&](uint64_t done) { return ::pread(fd, dst.p, size, static_cast<off_t>(offset + done)); });
  ::close(fd);
  return 0;
}

// Commit -> seen through a mount: the parent appends stamped records to its
// own file; a child reads the follow view (reads block at the end of data).
int cmd_follow_latency(const char* write_path, const char* follow_path, uint64_t count, uint64_t interval_us) {
  struct stat st {};
  if (::stat(write_path, &st) != 0) die(std::string("stat ") + write_path);
  const auto start = static_cast<uint64_t>(st.st_size);
  int ready[2];
  int result[2];
  if (::pipe(ready) != 0 || ::pipe(result) != 0) die("pipe");
  const pid_t child = ::fork();
  if (child < 0) die("fork");
  if (child == 0) {
    const int fd = ::open(follow_path, O_RDONLY);
    if (fd < 0) die(std::string("open ") + follow_path);
    send_cmd(ready[1], 'k');
    std::vector<uint64_t> samples;
    samples.reserve(count);
    std::vector<std::byte> buf(64 * 1024);
    std::vector<std::byte> pending;
    // The follow view is a stream (no seeking): skip what was there before.
    uint64_t skip = start;
    while (samples.size() < count) {
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die(std::string("read ") + follow_path);
      if (n == 0) die(std::string("end of file on ") + follow_path);
      const uint64_t t = now_ns();
      auto first = static_cast<std::ptrdiff_t>(std::min<uint64_t>(skip, static_cast<uint64_t>(n)));
      skip -= static_cast<uint64_t>(first);
      pending.insert(pending.end(), buf.begin() + first, buf.begin() + n);
      std::size_t i = 0;
      for (; i + kRecord <= pending.size() && samples.size() < count; i += kRecord) {
        uint64_t stamp = 0;
        std::memcpy(&stamp, pending.data() + i, sizeof stamp);
        samples.push_back(t - stamp);
      }
      pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(i));
    }
    print_latency("mount", samples);
    std::fflush(stdout);
    std::_Exit(0);
  }
  if (recv_cmd(ready[0]) != 'k') die("reader not ready");
  const int fd = ::open(write_path, O_WRONLY | O_APPEND);
  if (fd < 0) die(std::string("open ") + write_path);
  std::byte record[kRecord] = {};
  uint64_t next = now_ns();
  for (uint64_t i = 0; i < count; ++i) {
    next += interval_us * 1000;
    while (now_ns() < next) ::usleep(static_cast<useconds_t>(std::min<uint64_t>(interval_us / 4 + 1, 50)));
    const uint64_t t = now_ns();
    std::memcpy(record, &t, sizeof t);
    write_all(fd, record, sizeof record);
  }
  ::close(fd);
  // The reader must finish within a few seconds of the last write.
  for (int i = 0; i < 1000; ++i) {
    int status = 0;
    const pid_t r = ::waitpid(child, &status, WNOHANG);
    if (r == child) return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
    ::usleep(10'000);
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  die("the follow reader never saw every record");
}

int usage() {
  std::fprintf(stderr,
               "usage: bench_tool stream lib|unix|tcp SIZE TOTAL REPS\n"
               "       bench_tool latency lib|unix COUNT\n"
               "       bench_tool write PATH SIZE MAX_BYTES MAX_SECONDS [create]\n"
               "       bench_tool read PATH SIZE MAX_BYTES MAX_SECONDS OFFSET\n"
               "       bench_tool follow-latency WRITE_PATH FOLLOW_PATH COUNT INTERVAL_US\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) return usage();
  const std::string cmd = argv[1];
  if (cmd == "stream" && argc == 6) {
    return cmd_stream(argv[2], parse_u64(argv[3]), parse_u64(argv[4]), static_cast<int>(parse_u64(argv[5])));
  }
  if (cmd == "latency" && argc == 4) {
    const std::string kind = argv[2];
    if (kind == "lib") return cmd_latency_lib(parse_u64(argv[3]));
    if (kind == "unix") return cmd_latency_unix(parse_u64(argv[3]));
    return usage();
  }
  if (cmd == "write" && (argc == 6 || argc == 7)) {
    return cmd_write(argv[2], parse_u64(argv[3]), parse_u64(argv[4]), std::atof(argv[5]),
                     argc == 7 && std::string(argv[6]) == "create");
  }
  if (cmd == "read" && argc == 7) {
    return cmd_read(argv[2], parse_u64(argv[3]), parse_u64(argv[4]), std::atof(argv[5]), parse_u64(argv[6]));
  }
  if (cmd == "follow-latency" && argc == 6) {
    return cmd_follow_latency(argv[2], argv[3], parse_u64(argv[4]), parse_u64(argv[5]));
  }
  return usage();
}
