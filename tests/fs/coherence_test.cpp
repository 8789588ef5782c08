// SPDX-License-Identifier: MIT
// Coherence between peers: what one daemon commits is visible in another
// daemon's mount as soon as write() returns; poll wakes on new data; the
// follow view streams; concurrent writers never interleave within a write.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "mount_support.hpp"

namespace ivshmfs::fstest {
namespace {

// A region large enough for the streaming tests.
class Peers : public TwoPeers {
 protected:
  Peers() : TwoPeers(16 << 20, 2) {}
};

TEST_F(Peers, AWriteIsVisibleInTheOtherMountAsSoonAsItReturns) {
  const int writer = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(writer, 0);
  // The reader keeps its file open across writes: no cached size or pages
  // may hide what the peer appended.
  const int reader = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  std::string expected;
  for (int i = 0; i < 300; ++i) {
    const std::string record = "record " + std::to_string(i) + "\n";
    ASSERT_EQ(::write(writer, record.data(), record.size()), static_cast<ssize_t>(record.size()));
    expected += record;
    struct stat st {};
    ASSERT_EQ(::stat(b_->file("vm0").c_str(), &st), 0);
    ASSERT_EQ(st.st_size, static_cast<off_t>(expected.size())) << "stat in the other mount after write " << i;
    ASSERT_EQ(::fstat(reader, &st), 0);
    ASSERT_EQ(st.st_size, static_cast<off_t>(expected.size())) << "fstat of an open file after write " << i;
    char buf[64];
    const ssize_t n = ::pread(reader, buf, sizeof buf, static_cast<off_t>(expected.size() - record.size()));
    ASSERT_EQ(std::string(buf, static_cast<std::size_t>(std::max<ssize_t>(n, 0))), record) << "after write " << i;
  }
  EXPECT_EQ(read_all(b_->file("vm0")), expected);
  ::close(reader);
  ::close(writer);
}

TEST_F(Peers, AResetIsVisibleInTheOtherMountAsATruncation) {
  const int reader = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  for (int i = 0; i < 50; ++i) {
    const std::string text = "generation " + std::to_string(i);
    const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    ::close(fd);
    struct stat st {};
    ASSERT_EQ(::fstat(reader, &st), 0);
    ASSERT_EQ(st.st_size, static_cast<off_t>(text.size()));
    char buf[64];
    const ssize_t n = ::pread(reader, buf, sizeof buf, 0);
    ASSERT_EQ(std::string(buf, static_cast<std::size_t>(std::max<ssize_t>(n, 0))), text);
  }
  ::close(reader);
}

TEST_F(Peers, TheOtherDirectionWorksToo) {
  const int fd = ::open(b_->file("vm1").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "from vm1", 8), 8);
  ::close(fd);
  EXPECT_EQ(read_all(a_->file("vm1")), "from vm1");
}

TEST_F(Peers, PollWakesWhenAPeerCommits) {
  const int fd = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(read_all_fd(fd), "");
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 0), 0) << "nothing to read yet";

  auto waiter = std::async(std::launch::async, [fd] {
    pollfd q{fd, POLLIN, 0};
    const int r = ::poll(&q, 1, static_cast<int>(std::chrono::milliseconds(kDeadline).count()));
    return r == 1 ? q.revents : -1;
  });
  std::this_thread::sleep_for(200ms);  // usually lets the waiter block first; correct either way
  const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(w, 0);
  ASSERT_EQ(::write(w, "wake", 4), 4);
  ::close(w);
  const int revents = waiter.get();
  EXPECT_NE(revents, -1) << "poll did not wake within the deadline";
  EXPECT_TRUE((revents & POLLIN) != 0) << "revents " << revents;
  EXPECT_EQ(read_all_fd(fd), "wake");
  ASSERT_EQ(::poll(&p, 1, 0), 0) << "read to the end: nothing new";
  ::close(fd);
}

TEST_F(Peers, EpollOnTheFollowViewWakesWhenAPeerCommits) {
  const int fd = ::open(b_->file("follow/vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  ASSERT_EQ(::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0) << std::strerror(errno);
  epoll_event out{};
  ASSERT_EQ(::epoll_wait(ep, &out, 1, 0), 0) << "empty partition: not readable";
  auto waiter = std::async(std::launch::async, [ep] {
    epoll_event got{};
    return ::epoll_wait(ep, &got, 1, static_cast<int>(std::chrono::milliseconds(kDeadline).count()));
  });
  std::this_thread::sleep_for(200ms);
  const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(w, 0);
  ASSERT_EQ(::write(w, "ep", 2), 2);
  ::close(w);
  EXPECT_EQ(waiter.get(), 1) << "epoll did not wake within the deadline";
  char buf[8];
  EXPECT_EQ(::read(fd, buf, sizeof buf), 2);
  ::close(ep);
  ::close(fd);
}

TEST_F(Peers, FollowReadsWaitForMoreData) {
  const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(w, 0);
  ASSERT_EQ(::write(w, "first", 5), 5);
  const int fd = ::open(b_->file("follow/vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  char buf[64];
  ASSERT_EQ(::read(fd, buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "first");

  for (const std::string next : {"second", "third", "fourth"}) {
    auto reader = std::async(std::launch::async, [fd] {
      char b[64];
      const ssize_t n = ::read(fd, b, sizeof b);
      return n < 0 ? "error: " + std::string(std::strerror(errno)) : std::string(b, static_cast<std::size_t>(n));
    });
    std::this_thread::sleep_for(100ms);  // usually parks the read first; correct either way
    ASSERT_EQ(::write(w, next.data(), next.size()), static_cast<ssize_t>(next.size()));
    ASSERT_EQ(reader.wait_for(kDeadline), std::future_status::ready) << "the follow read never returned";
    EXPECT_EQ(reader.get(), next);
  }

  // A reset: the follow view continues with the new contents.
  ASSERT_EQ(::ftruncate(w, 0), 0);
  ASSERT_EQ(::write(w, "after reset", 11), 11);
  auto reader = std::async(std::launch::async, [fd] {
    char b[64];
    const ssize_t n = ::read(fd, b, sizeof b);
    return n < 0 ? std::string("error") : std::string(b, static_cast<std::size_t>(n));
  });
  ASSERT_EQ(reader.wait_for(kDeadline), std::future_status::ready);
  EXPECT_EQ(reader.get(), "after reset");
  ::close(fd);
  ::close(w);
}

TEST_F(Peers, FollowStreamsThroughCatIntoAPipe) {
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  const pid_t cat = ::fork();
  if (cat == 0) {
    ::dup2(pipefd[1], STDOUT_FILENO);
    ::execlp("cat", "cat", b_->file("follow/vm0").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_GT(cat, 0);
  ::close(pipefd[1]);
  std::string expected;
  std::string got;
  for (int i = 0; i < 20; ++i) {
    const std::string line = "line " + std::to_string(i) + "\n";
    expected += line;
    const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    ASSERT_GE(w, 0);
    ASSERT_EQ(::write(w, line.data(), line.size()), static_cast<ssize_t>(line.size()));
    ::close(w);
    const bool arrived = eventually([&] {
      pollfd p{pipefd[0], POLLIN, 0};
      while (::poll(&p, 1, 0) == 1) {
        char buf[256];
        const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
      }
      return got == expected;
    });
    ASSERT_TRUE(arrived) << "cat follow/vm0 delivered '" << got << "'";
  }
  ::kill(cat, SIGINT);  // cat has no handler: this interrupts its parked read
  int status = 0;
  ASSERT_TRUE(eventually([&] { return ::waitpid(cat, &status, WNOHANG) == cat; })) << "cat did not stop on SIGINT";
  EXPECT_TRUE(WIFSIGNALED(status));
  ::close(pipefd[0]);
}

void ignore_signal(int /*sig*/) {}

TEST_F(Peers, ASignalInterruptsABlockedFollowRead) {
  struct sigaction sa {};
  sa.sa_handler = ignore_signal;
  sa.sa_flags = 0;  // no SA_RESTART: the read must fail with EINTR
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);

  const int fd = ::open(b_->file("follow/vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::atomic<bool> done{false};
  std::atomic<int> result{0};
  std::atomic<int> error{0};
  std::thread reader([&] {
    char buf[16];
    result = static_cast<int>(::read(fd, buf, sizeof buf));
    error = errno;
    done = true;
  });
  // The signal may come before the read blocks; send it until the read returns.
  const bool returned = eventually(
      [&] {
        if (!done) ::pthread_kill(reader.native_handle(), SIGUSR1);
        return done.load();
      },
      kDeadline);
  if (!returned) {
    // Unblock the reader so the test can end, then fail.
    const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
    if (w >= 0) {
      (void)!::write(w, "x", 1);
      ::close(w);
    }
  }
  reader.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  ASSERT_TRUE(returned) << "the follow read ignored the signal";
  EXPECT_EQ(result.load(), -1);
  EXPECT_EQ(error.load(), EINTR);

  // The file still works after the interruption.
  const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(w, 0);
  ASSERT_EQ(::write(w, "ok", 2), 2);
  ::close(w);
  char buf[8];
  EXPECT_EQ(::read(fd, buf, sizeof buf), 2);
  ::close(fd);
}

// A record: "R", writer, sequence, length, payload, checksum of all before it.
std::string make_record(uint32_t writer, uint32_t seq, std::size_t payload_size, std::mt19937& rng) {
  std::string r = "R";
  auto put32 = [&](uint32_t v) { r.append(reinterpret_cast<const char*>(&v), 4); };
  put32(writer);
  put32(seq);
  put32(static_cast<uint32_t>(payload_size));
  for (std::size_t i = 0; i < payload_size; ++i) r.push_back(static_cast<char>(rng()));
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (char c : r) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  r.append(reinterpret_cast<const char*>(&h), 8);
  return r;
}

TEST_F(Peers, ConcurrentWritersNeverInterleaveWithinAWrite) {
  constexpr uint32_t kThreads = 4;
  constexpr uint32_t kProcesses = 2;
  constexpr uint32_t kRecords = 150;
  auto write_records = [this](uint32_t writer) {
    std::mt19937 rng(writer);
    const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return false;
    for (uint32_t seq = 0; seq < kRecords; ++seq) {
      const std::string r = make_record(writer, seq, 1 + rng() % 9000, rng);
      if (::write(fd, r.data(), r.size()) != static_cast<ssize_t>(r.size())) return false;
    }
    ::close(fd);
    return true;
  };
  std::vector<pid_t> children;
  for (uint32_t p = 0; p < kProcesses; ++p) {
    const pid_t child = ::fork();
    if (child == 0) _exit(write_records(kThreads + p) ? 0 : 1);
    children.push_back(child);
  }
  std::vector<std::future<bool>> threads;
  for (uint32_t t = 0; t < kThreads; ++t) threads.push_back(std::async(std::launch::async, write_records, t));
  for (auto& t : threads) EXPECT_TRUE(t.get()) << "a writer thread failed";
  for (pid_t c : children) {
    int status = 0;
    ::waitpid(c, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a writer process failed";
  }

  const std::string all = read_all(b_->file("vm0"));
  std::map<uint32_t, uint32_t> next_seq;
  std::size_t pos = 0;
  std::size_t records = 0;
  while (pos < all.size()) {
    ASSERT_LE(pos + 13, all.size()) << "truncated record header at " << pos;
    ASSERT_EQ(all[pos], 'R') << "record boundary lost at " << pos;
    uint32_t writer = 0, seq = 0, size = 0;
    std::memcpy(&writer, all.data() + pos + 1, 4);
    std::memcpy(&seq, all.data() + pos + 5, 4);
    std::memcpy(&size, all.data() + pos + 9, 4);
    ASSERT_LE(pos + 13 + size + 8, all.size()) << "truncated record at " << pos;
    uint64_t h = 1469598103934665603ULL;
    for (std::size_t i = pos; i < pos + 13 + size; ++i) h = (h ^ static_cast<unsigned char>(all[i])) * 1099511628211ULL;
    uint64_t stored = 0;
    std::memcpy(&stored, all.data() + pos + 13 + size, 8);
    ASSERT_EQ(h, stored) << "checksum mismatch: a write was interleaved at " << pos;
    EXPECT_EQ(seq, next_seq[writer]) << "writer " << writer << " out of order";
    next_seq[writer] = seq + 1;
    pos += 13 + size + 8;
    ++records;
  }
  EXPECT_EQ(records, static_cast<std::size_t>((kThreads + kProcesses) * kRecords));
}

// Files opened for reading go through the kernel's page cache (the
// default; -o direct_io below turns it off): a mapping of another
// peer's file shows its bytes, picks up what the owner appends into the
// mapped page, and shows the new contents after a reset.

TEST_F(Peers, AMappingOfAPeersFileFollowsAppendsAndResets) {
  append(a_->file("vm0"), "abc");
  const int fd = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const long page = ::sysconf(_SC_PAGESIZE);
  void* map = ::mmap(nullptr, static_cast<std::size_t>(page), PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED) << "mmap(PROT_READ, MAP_SHARED): " << std::strerror(errno);
  const auto* bytes = static_cast<const volatile char*>(map);
  const auto mapped = [&](std::size_t n) {
    std::string out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(bytes[i]);
    return out;
  };
  EXPECT_EQ(mapped(3), "abc");
  EXPECT_EQ(mapped(4), std::string("abc") + '\0') << "past the end of the file: zeros";

  // The page was mapped while it held the end of the file: an append into
  // it shows within the notification latency.
  append(a_->file("vm0"), "defgh");
  EXPECT_TRUE(eventually([&] { return mapped(8) == "abcdefgh"; })) << "mapping shows '" << mapped(8) << "'";

  // A reset: once the file was looked at again (here: opened and read),
  // the mapping shows the new generation, zeros past its end. (Before, its
  // dropped pages fault with SIGBUS: it never shows old and new together.)
  ASSERT_EQ(::truncate(a_->file("vm0").c_str(), 0), 0);
  append(a_->file("vm0"), "XY");
  EXPECT_EQ(read_all(b_->file("vm0")), "XY");
  const std::string reset_view = std::string("XY") + std::string(6, '\0');
  EXPECT_EQ(mapped(8), reset_view);
  char buf[16];
  EXPECT_EQ(::pread(fd, buf, sizeof buf, 0), 2);
  EXPECT_EQ(std::string(buf, 2), "XY");
  ::munmap(map, static_cast<std::size_t>(page));
  ::close(fd);

  // The own file maps too.
  const int own = ::open(a_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(own, 0);
  void* own_map = ::mmap(nullptr, 2, PROT_READ, MAP_SHARED, own, 0);
  ASSERT_NE(own_map, MAP_FAILED) << std::strerror(errno);
  EXPECT_EQ(std::string(static_cast<const char*>(own_map), 2), "XY");
  ::munmap(own_map, 2);
  ::close(own);
}

// vm1's daemon prints every request it gets (libfuse's -o debug).
class PeersCountingRequests : public Peers {
 protected:
  std::vector<std::string> extra_options_b() override { return {"debug"}; }
};

// A file that does not change, whose last page is partial, read again and
// again through the page cache: the kernel asks the daemon for its bytes
// once. Its short last page used to be dropped after every read, so each
// read asked again, and a read could race the drop of its own page: on one
// CPU (a guest) every cat took dozens of reads, for minutes at times.
TEST_F(PeersCountingRequests, AnUnchangedFileIsReadFromThePageCacheAgainAndAgain) {
  const std::string data = "nineteen bytes long";
  {
    const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
  }
  const auto reads = [&] {
    const std::string log = b_->log();
    std::size_t n = 0;
    for (auto at = log.find("opcode: READ ("); at != std::string::npos; at = log.find("opcode: READ (", at + 1)) ++n;
    return n;
  };
  const std::size_t before = reads();
  constexpr int kRounds = 30;
  for (int i = 0; i < kRounds; ++i) {
    const int fd = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    ::close(fd);
    ASSERT_EQ(std::string(buf, static_cast<std::size_t>(std::max<ssize_t>(n, 0))), data) << "round " << i;
    // Time for the daemon to do whatever it does after a read.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(reads() - before, 2U) << kRounds << " opens and reads of an unchanged 19-byte file asked the daemon for "
                                  << "its bytes " << reads() - before << " times; the page cache should hold them";
}

// The page cache never hands out a mix of generations: the owner resets and
// rewrites its file with one byte value per generation while readers in the
// other mount read it through the page cache; every read() returns bytes of
// one generation (or fails with ESTALE while a reset is being noticed).
TEST_F(Peers, CachedReadsNeverMixGenerations) {
  constexpr std::size_t kSize = 256 * 1024;
  std::atomic<bool> done{false};
  std::atomic<int> mixed{0};
  std::atomic<long> reads{0};
  std::atomic<long> stale{0};
  std::mutex first_mutex;
  std::string first;  // what the first bad read looked like
  const auto note = [&](const std::string& what) {
    ++mixed;
    std::lock_guard lock(first_mutex);
    if (first.empty()) first = what;
  };
  auto reader = [&](std::size_t chunk) {
    std::vector<char> buf(chunk);
    std::mt19937 rng(static_cast<unsigned>(chunk));
    while (!done) {
      const int fd = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      for (int i = 0; i < 50 && !done; ++i) {
        const auto off = static_cast<off_t>(rng() % kSize);
        const ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
        if (n < 0) {
          if (errno == ESTALE)
            ++stale;
          else
            ++mixed;  // no other error is expected
          continue;
        }
        ++reads;
        for (ssize_t k = 1; k < n; ++k) {
          if (buf[static_cast<std::size_t>(k)] != buf[0]) {
            note("a read of " + std::to_string(n) + " bytes at " + std::to_string(off) + ": byte 0 is " +
                 std::to_string(buf[0]) + ", byte " + std::to_string(k) + " is " +
                 std::to_string(buf[static_cast<std::size_t>(k)]));
            break;
          }
        }
      }
      ::close(fd);
    }
  };
  std::vector<std::thread> readers;
  for (std::size_t chunk : {std::size_t{4096}, std::size_t{65536}, std::size_t{200000}})
    readers.emplace_back(reader, chunk);
  const auto until = std::chrono::steady_clock::now() + 2s;
  int generation = 0;
  while (std::chrono::steady_clock::now() < until) {
    const std::string data(kSize, static_cast<char>('a' + generation % 26));
    const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    ASSERT_GE(w, 0);
    ASSERT_EQ(::write(w, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(w);
    ++generation;
    std::this_thread::sleep_for(std::chrono::milliseconds(generation % 7));
  }
  done = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(mixed.load(), 0) << "reads mixing generations (or failing other than ESTALE), of " << reads.load()
                             << "; the first: " << first;
  EXPECT_GT(reads.load(), 0);
  RecordProperty("generations", generation);
  RecordProperty("estale", static_cast<int>(stale.load()));
}

// Many programs stat()ing and reading a peer's file through the page cache
// while its owner appends: every attribute reply may show a new size, and
// reads keep pages locked until the daemon answers them. The mount must
// never hang: no attribute reply may wait for a read, no daemon thread may
// wait for the kernel (dropping pages) while holding what a read needs.
// Should it hang, the test aborts the reading mount's FUSE connection (so
// the threads stuck in it return) and fails saying so.
TEST_F(Peers, StatAndReadWhileTheOwnerAppendsNeverHang) {
  constexpr int kStatThreads = 24;
  constexpr int kReadThreads = 24;
  constexpr auto kRun = 4s;
  constexpr auto kHang = 60s;  // far beyond any slow machine's pace
  struct stat mount_st {};
  ASSERT_EQ(::stat(b_->mountpoint().c_str(), &mount_st), 0) << std::strerror(errno);
  append(a_->file("vm0"), std::string(10000, 'x'));

  std::atomic<bool> stop{false};
  std::atomic<long> stats{0};
  std::atomic<long> reads{0};
  std::atomic<long> failures{0};
  std::mutex first_mutex;
  std::string first_failure;
  const auto fail = [&](const std::string& what) {
    ++failures;
    std::lock_guard lock(first_mutex);
    if (first_failure.empty()) first_failure = what;
  };
  std::vector<std::thread> threads;
  std::atomic<int> finished{0};
  for (int t = 0; t < kStatThreads; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        struct stat st {};
        if (::stat(b_->file("vm0").c_str(), &st) != 0) {
          fail(std::string("stat: ") + std::strerror(errno));
        } else {
          ++stats;
        }
      }
      ++finished;
    });
  }
  for (int t = 0; t < kReadThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<char> buf(4096);
      while (!stop) {
        const int fd = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          fail(std::string("open: ") + std::strerror(errno));
          continue;
        }
        // Sequential 4 KiB reads to the end; half the readers go on waiting
        // at the end for the owner's next append, as tail -f does.
        for (int rounds = 0; !stop && rounds < (t % 2 == 0 ? 1 : 20);) {
          const ssize_t n = ::read(fd, buf.data(), buf.size());
          if (n < 0) {
            fail(std::string("read: ") + std::strerror(errno));
            break;
          }
          ++reads;
          for (ssize_t k = 0; k < n; ++k) {
            if (buf[static_cast<std::size_t>(k)] != 'x') {
              fail("a read returned byte " + std::to_string(buf[static_cast<std::size_t>(k)]) + " (not 'x')");
              break;
            }
          }
          if (n == 0) ++rounds;
        }
        ::close(fd);
      }
      ++finished;
    });
  }
  // The owner appends continuously, in pieces that leave the last page short.
  const int writer = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(writer, 0) << std::strerror(errno);
  const std::string piece(777, 'x');
  long appends = 0;
  const auto until = std::chrono::steady_clock::now() + kRun;
  while (std::chrono::steady_clock::now() < until) {
    if (::write(writer, piece.data(), piece.size()) != static_cast<ssize_t>(piece.size())) {
      fail(std::string("append: ") + std::strerror(errno));
      break;
    }
    ++appends;
    std::this_thread::sleep_for(500us);
  }
  ::close(writer);
  stop = true;
  const bool hung = !eventually([&] { return finished.load() == kStatThreads + kReadThreads; }, kHang);
  const int waiting = kStatThreads + kReadThreads - finished.load();
  if (hung) {
    ASSERT_TRUE(abort_fuse_connection(mount_st.st_dev)) << "could not abort the hung mount";
  }
  for (auto& t : threads) t.join();
  ASSERT_FALSE(hung) << "the reading mount hung: " << waiting << " threads were still waiting in it " << kHang.count()
                     << " s after the run ended; its connection was aborted";
  EXPECT_EQ(failures.load(), 0) << "the first failure: " << first_failure;
  EXPECT_GT(stats.load(), 0);
  EXPECT_GT(reads.load(), 0);
  RecordProperty("appends", static_cast<int>(appends));
  RecordProperty("stats", static_cast<int>(stats.load()));
  RecordProperty("reads", static_cast<int>(reads.load()));
}

// -o direct_io turns the page cache off: every read() reaches the daemon,
// and mmap fails with ENODEV as on any direct-I/O file.
class DirectIoPeers : public Peers {
 protected:
  std::vector<std::string> extra_options_b() override { return {"direct_io"}; }
};

TEST_F(DirectIoPeers, ReadsWorkAndMmapIsRefused) {
  append(a_->file("vm0"), "abc");
  const int fd = ::open(b_->file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  void* map = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
  EXPECT_EQ(map, MAP_FAILED) << "mmap of a direct-I/O file succeeded";
  if (map == MAP_FAILED) {
    EXPECT_EQ(errno, ENODEV) << std::strerror(errno);
  } else {
    ::munmap(map, 4096);
  }
  char buf[16];
  EXPECT_EQ(::pread(fd, buf, sizeof buf, 0), 3);
  append(a_->file("vm0"), "de");
  EXPECT_EQ(::pread(fd, buf, sizeof buf, 0), 5) << "an append must show in the next read";
  EXPECT_EQ(std::string(buf, 5), "abcde");
  ::close(fd);
}

// Peers on one host wake each other by futex (docs/filesystem.md): the
// reader's daemon polls so slowly (10 s) that only a wake-up can deliver in
// time, and its .status counters say which path ended its waits.
class FutexPeers : public Peers {
 protected:
  std::vector<std::string> extra_options_b() override { return {"poll_min_us=10000000", "poll_max_ms=10000"}; }
};

// The futex-path wake-ups of a daemon so far: waits a peer's FUTEX_WAKE
// ended, plus those a word that moved before the wait ended at once.
uint64_t futex_wakeups(const std::string& status) {
  const auto line_at = status.find("\nwakeups source=futex ");
  if (line_at == std::string::npos) return 0;
  const std::string line = status.substr(line_at + 1, status.find('\n', line_at + 1) - line_at - 1);
  uint64_t total = 0;
  for (const std::string key : {" peer_wakes=", " changed="}) {
    const auto at = line.find(key);
    if (at != std::string::npos) total += std::stoull(line.substr(at + key.size()));
  }
  return total;
}

TEST_F(FutexPeers, AFollowReaderIsWokenByTheWritersFutex) {
  const std::string status = read_all(b_->file(".status"));
  ASSERT_NE(status.find("\nwakeups source=futex "), std::string::npos) << "vm1 does not use futex wake-ups:\n"
                                                                       << status << b_->log();
  const uint64_t before = futex_wakeups(status);
  const int w = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(w, 0);
  const int fd = ::open(b_->file("follow/vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  for (const std::string message : {"one", "two", "three"}) {
    auto reader = std::async(std::launch::async, [fd] {
      char b[64];
      const ssize_t n = ::read(fd, b, sizeof b);
      return n < 0 ? "error: " + std::string(std::strerror(errno)) : std::string(b, static_cast<std::size_t>(n));
    });
    std::this_thread::sleep_for(100ms);  // usually parks the read first; correct either way
    ASSERT_EQ(::write(w, message.data(), message.size()), static_cast<ssize_t>(message.size()));
    ASSERT_EQ(reader.wait_for(kDeadline), std::future_status::ready) << "the follow read never returned";
    EXPECT_EQ(reader.get(), message);
  }
  ::close(fd);
  ::close(w);
  // Not asserted per message: a commit that lands while the daemon looks
  // for another reason (a read parking) is found by that look instead.
  const std::string after = read_all(b_->file(".status"));
  EXPECT_GT(futex_wakeups(after), before) << "no wait of vm1's daemon ended by a futex wake-up:\n" << after;
}

}  // namespace
}  // namespace ivshmfs::fstest
