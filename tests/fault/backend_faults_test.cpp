// SPDX-License-Identifier: MIT
// Faults of the backend under running daemons and readers: the file
// truncated, its tmpfs full, the region formatted anew, and a live peer
// scribbling random bytes over the header, the partition table and the
// control blocks. Each time: the daemons stay alive, answer with a clear
// error (EIO, ENOSPC, EAGAIN), report no sanitizer error, and unmount
// cleanly (exit status 0).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "ivshmfs/region.hpp"
#include "mount_support.hpp"
#include "process_support.hpp"

namespace ivshmfs::faulttest {
namespace {

using namespace std::chrono_literals;
using fstest::Daemon;
using fstest::RegionFile;
using fstest::TempDir;

// What a sanitizer-built daemon prints when it finds something.
bool has_sanitizer_report(const std::string& log) {
  for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                             "runtime error:", "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer"}) {
    if (log.find(marker) != std::string::npos) return true;
  }
  return false;
}

// Running: not exited, and not a zombie waiting to be reaped.
bool alive(const Daemon& d) {
  if (d.exit_status() || d.pid() <= 0) return false;
  const std::string stat = slurp("/proc/" + std::to_string(d.pid()) + "/stat");
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' && stat[paren + 2] != 'X';
}

// The errno of one read(2) of `path` (0 when it succeeds).
int read_errno(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  char buf[4096];
  ssize_t n = 0;
  do {
    n = ::read(fd, buf, sizeof buf);
  } while (n > 0);
  const int e = n < 0 ? errno : 0;
  ::close(fd);
  return e;
}

int append_errno(const std::string& path, std::size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return errno;
  std::string data(size, 'x');
  const ssize_t n = ::write(fd, data.data(), data.size());
  const int e = n < 0 ? errno : 0;
  ::close(fd);
  return e;
}

// A process that reads every file of a mount again and again and records
// each distinct errno it met in `errors` (one line each).
int read_loop(const std::string& mountpoint, uint32_t partitions, const std::string& errors) {
  std::set<int> seen;
  for (;;) {
    for (uint32_t id = 0; id < partitions; ++id) {
      for (const std::string& name : {"vm" + std::to_string(id), std::string(".status")}) {
        const int e = read_errno(mountpoint + "/" + name);
        if (e != 0 && seen.insert(e).second) {
          std::ofstream(errors, std::ios::app) << e << "\n";
        }
      }
    }
  }
}

int write_loop(const std::string& file, const std::string& errors) {
  std::set<int> seen;
  std::mt19937 rng(static_cast<unsigned>(::getpid()));
  for (;;) {
    const int e = append_errno(file, 1 + rng() % 3000);
    if (e != 0 && seen.insert(e).second) std::ofstream(errors, std::ios::app) << e << "\n";
    if (e == ENOSPC) {
      ::truncate(file.c_str(), 0);
    }
    std::this_thread::sleep_for(1ms);
  }
}

std::set<int> errnos_in(const std::string& path) {
  std::set<int> out;
  std::ifstream in(path);
  int e = 0;
  while (in >> e) out.insert(e);
  return out;
}

std::string describe(const std::set<int>& errnos) {
  std::string out;
  for (int e : errnos) out += std::string(out.empty() ? "" : ", ") + std::strerror(e);
  return out.empty() ? "none" : out;
}

// Every errno in `got` must be one of `allowed`.
void expect_only(const std::set<int>& got, const std::set<int>& allowed, const std::string& who) {
  for (int e : got) {
    EXPECT_TRUE(allowed.count(e)) << who << " met " << std::strerror(e) << " (errno " << e << "), not a clear error of "
                                  << describe(allowed);
  }
}

class BackendFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto missing = fstest::missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
  }
};

// Issue 9, item 6: the backend file truncated under two daemons and their
// readers. No SIGBUS: reads and writes fail with EIO, the daemons stay up
// and unmount cleanly.
TEST_F(BackendFaults, TruncatedBackendGivesEioAndDaemonsSurvive) {
  RegionFile region(1 << 20, 2);
  ScratchDir dir("trunc");
  TempDir a_dir("fault-trunc-a");
  TempDir b_dir("fault-trunc-b");
  Daemon a(Daemon::Config{region.path(), a_dir.path(), 0});
  Daemon b(Daemon::Config{region.path(), b_dir.path(), 1});
  ASSERT_TRUE(a.start()) << a.log();
  ASSERT_TRUE(b.start()) << b.log();
  fstest::append(a.file("vm0"), std::string(100000, 'a'));
  fstest::append(b.file("vm1"), std::string(100000, 'b'));
  Child reader(dir.file("reader.log"), [&] { return read_loop(b.mountpoint(), 2, dir.file("reader-errors")); });
  Child writer(dir.file("writer.log"), [&] { return write_loop(a.file("vm0"), dir.file("writer-errors")); });
  std::this_thread::sleep_for(300ms);

  ASSERT_EQ(::truncate(region.path().c_str(), 4096), 0) << std::strerror(errno);
  std::this_thread::sleep_for(1s);
  EXPECT_TRUE(alive(a)) << "vm0's daemon died after the backend was truncated (status " << a.exit_status().value_or(-1)
                        << "):\n"
                        << a.log();
  EXPECT_TRUE(alive(b)) << "vm1's daemon died after the backend was truncated (status " << b.exit_status().value_or(-1)
                        << "):\n"
                        << b.log();
  if (alive(a) && alive(b)) {
    EXPECT_EQ(read_errno(a.file("vm0")), EIO) << "reading the own partition of a truncated backend";
    EXPECT_EQ(read_errno(b.file("vm0")), EIO) << "reading a peer's partition of a truncated backend";
    EXPECT_EQ(append_errno(a.file("vm0"), 10), EIO) << "appending to a truncated backend";
  }
  reader.kill_and_reap();
  writer.kill_and_reap();
  expect_only(errnos_in(dir.file("reader-errors")), {EIO}, "the reader");
  expect_only(errnos_in(dir.file("writer-errors")), {EIO, ENOSPC}, "the writer");
  a.stop();
  b.stop();
  EXPECT_EQ(a.exit_status().value_or(-1), 0) << "vm0 did not unmount cleanly:\n" << a.log();
  EXPECT_EQ(b.exit_status().value_or(-1), 0) << "vm1 did not unmount cleanly:\n" << b.log();
}

// A tmpfs of its own, mounted for one test and always unmounted.
class TinyTmpfs {
 public:
  explicit TinyTmpfs(const std::string& size) : dir_("fault-tmpfs") {
    mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~TinyTmpfs() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  TinyTmpfs(const TinyTmpfs&) = delete;
  TinyTmpfs& operator=(const TinyTmpfs&) = delete;
  [[nodiscard]] bool mounted() const { return mounted_; }
  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] std::string file(const std::string& name) const { return dir_.path() + "/" + name; }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string error_;
};

// Issue 9, item 6: a sparse region on a full tmpfs (as QEMU and truncate make
// them), here with the own partition's pages taken away after the claim. The
// append that finds no page gets ENOSPC or EIO, the daemon stays up, every
// byte acknowledged before is still there, and it unmounts cleanly.
TEST_F(BackendFaults, FullTmpfsGivesEnospcAndDaemonSurvives) {
  TinyTmpfs fs("3m");
  ASSERT_TRUE(fs.mounted()) << "mount -t tmpfs: " << fs.error();
  const std::string backend = fs.file("region");
  uint64_t data_offset = 0;
  uint64_t capacity = 0;
  {
    // Sparse, as QEMU and truncate(1) make them: 4 MiB on 3 MiB.
    const int fd = ::open(backend.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    ASSERT_EQ(::ftruncate(fd, 4 << 20), 0) << std::strerror(errno);
    ::close(fd);
    auto b = Backend::open(backend, BackendOptions{true, false, 0});
    ASSERT_TRUE(b) << b.error().message;
    ASSERT_TRUE(Region::format(**b, FormatOptions{2, false}));
    auto r = Region::open(std::move(b).value());
    ASSERT_TRUE(r) << r.error().message;
    data_offset = (*r)->find(0)->data_offset;
    capacity = (*r)->find(0)->capacity;
  }
  TempDir mnt("fault-enospc");
  Daemon d(Daemon::Config{backend, mnt.path(), 0});
  ASSERT_TRUE(d.start()) << d.log();
  // The own partition may have been backed when it was claimed: take its
  // pages away past the first 128 KiB, then fill the tmpfs to the last page.
  {
    const int fd = ::open(backend.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const auto keep = static_cast<off_t>(128 << 10);
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(data_offset) + keep,
                          static_cast<off_t>(capacity) - keep),
              0)
        << std::strerror(errno);
    ::close(fd);
    const int filler = ::open(fs.file("filler").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(filler, 0) << std::strerror(errno);
    const std::string page(4096, 'f');
    while (::write(filler, page.data(), page.size()) > 0) {
    }
    ::close(filler);
  }
  std::string acknowledged;
  int error = 0;
  const int fd = ::open(d.file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  for (int i = 0; i < 64 && error == 0; ++i) {  // 64 x 64 KiB: far more than the tmpfs holds
    const std::string chunk(65536, static_cast<char>('A' + i % 26));
    const ssize_t n = ::write(fd, chunk.data(), chunk.size());
    if (n < 0) {
      error = errno;
    } else {
      acknowledged += chunk.substr(0, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  EXPECT_TRUE(error == ENOSPC || error == EIO)
      << "appending past a full tmpfs gave " << (error == 0 ? "no error" : std::strerror(error))
      << ", not ENOSPC or EIO (after " << acknowledged.size() << " bytes)";
  ASSERT_TRUE(alive(d)) << "the daemon died on a full tmpfs (status " << d.exit_status().value_or(-1) << "):\n"
                        << d.log();
  // Nothing acknowledged is lost: the region file still holds it. Through
  // the mount the daemon may serve it, or refuse every read with EIO once
  // its mapping lost a page (a clear error, not wrong bytes).
  {
    auto r = Region::open_path(backend, RegionOpenOptions{});
    ASSERT_TRUE(r) << r.error().message;
    std::vector<std::byte> held(acknowledged.size() + 4096);
    auto n = (*r)->read(0, 0, held);
    ASSERT_TRUE(n) << n.error().message;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(held.data()), *n), acknowledged)
        << "the committed bytes are not exactly the acknowledged ones";
  }
  if (const int e = read_errno(d.file("vm0")); e != 0) {
    // A read through the page cache (the default) asks at open whether the
    // backend lost pages, and says why: ENOSPC when its filesystem is full
    // (docs/filesystem.md, Errors at a glance); a direct read says EIO.
    EXPECT_TRUE(e == EIO || e == ENOSPC) << "reading the partition after the tmpfs filled: " << std::strerror(e);
  } else {
    EXPECT_EQ(slurp(d.file("vm0")), acknowledged) << "the daemon serves bytes that were not acknowledged";
  }
  EXPECT_NE(d.log().find("rror"), std::string::npos) << "no log line says why the write failed:\n" << d.log();
  d.stop();
  EXPECT_EQ(d.exit_status().value_or(-1), 0) << d.log();
}

// The same for ivshmctl write: a clear error and status 1, not SIGBUS.
TEST_F(BackendFaults, FullTmpfsIvshmctlWriteFailsClearly) {
  TinyTmpfs fs("256k");
  ASSERT_TRUE(fs.mounted()) << "mount -t tmpfs: " << fs.error();
  const std::string backend = fs.file("region");
  ASSERT_EQ(fstest::run_program({"truncate", "-s", "4M", backend}), 0);
  ASSERT_EQ(fstest::run_program({IVSHMCTL_PATH, "format", "--partitions", "2", backend}), 0);
  const std::string big = "/tmp/" + fstest::unique_name("input");
  { std::ofstream(big) << std::string(1 << 20, 'z'); }
  const std::string log = "/tmp/" + fstest::unique_name("ivshmctl") + ".log";
  const int status =
      fstest::run_program({"sh", "-c", std::string(IVSHMCTL_PATH) + " write " + backend + " 1 < " + big}, log);
  const std::string out = slurp(log);
  ::unlink(log.c_str());
  ::unlink(big.c_str());
  EXPECT_EQ(status, 1) << "ivshmctl write on a full tmpfs: exit status " << status
                       << " (1 is a reported error; -1 a signal such as SIGBUS):\n"
                       << out;
  EXPECT_NE(out.find("ivshmctl"), std::string::npos) << "no message says why:\n" << out;
}

// A region formatted anew under running daemons, a writer and a reader: the
// daemons notice, answer EIO, and nothing crashes.
TEST_F(BackendFaults, ReformatUnderRunningDaemons) {
  RegionFile region(1 << 20, 2);
  ScratchDir dir("reformat");
  TempDir a_dir("fault-ref-a");
  TempDir b_dir("fault-ref-b");
  Daemon a(Daemon::Config{region.path(), a_dir.path(), 0});
  Daemon b(Daemon::Config{region.path(), b_dir.path(), 1});
  ASSERT_TRUE(a.start()) << a.log();
  ASSERT_TRUE(b.start()) << b.log();
  Child writer(dir.file("writer.log"), [&] { return write_loop(a.file("vm0"), dir.file("writer-errors")); });
  Child reader(dir.file("reader.log"), [&] { return read_loop(b.mountpoint(), 2, dir.file("reader-errors")); });
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(fstest::run_program({IVSHMCTL_PATH, "format", "--force", "--partitions", "3", region.path()}), 0);
  // Both daemons must notice (the watcher polls) and refuse everything.
  EXPECT_TRUE(fstest::eventually([&] { return read_errno(b.file("vm0")) == EIO; }))
      << "vm1's daemon still serves a region that was formatted anew";
  EXPECT_TRUE(fstest::eventually([&] { return append_errno(a.file("vm0"), 10) == EIO; }))
      << "vm0's daemon still appends to a region that was formatted anew";
  std::this_thread::sleep_for(300ms);
  writer.kill_and_reap();
  reader.kill_and_reap();
  expect_only(errnos_in(dir.file("writer-errors")), {EIO, ENOSPC}, "the writer");
  expect_only(errnos_in(dir.file("reader-errors")), {EIO}, "the reader");
  EXPECT_TRUE(alive(a)) << a.log();
  EXPECT_TRUE(alive(b)) << b.log();
  // The new format is untouched by the old daemons: nothing claimed, nothing written.
  auto fresh = Region::open_path(region.path(), RegionOpenOptions{});
  ASSERT_TRUE(fresh) << fresh.error().message;
  for (const auto& p : (*fresh)->partitions()) {
    auto s = (*fresh)->stat(p.id);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->length, 0U) << "an old daemon wrote into partition " << p.id << " of the new format";
    EXPECT_FALSE(s->claimed) << "an old daemon claimed partition " << p.id << " of the new format";
  }
  a.stop();
  b.stop();
  EXPECT_EQ(a.exit_status().value_or(-1), 0) << a.log();
  EXPECT_EQ(b.exit_status().value_or(-1), 0) << b.log();
}

// A hostile peer: random bytes into the metadata of a live region. The
// first 60% of the time only the control blocks (so restarted daemons still
// open the region and meet scribbled claims, lengths and generations), then
// also the partition table and the header but its magic and format id (the
// daemons keep serving from their private copies), the last 20% everything.
int scribble(const std::string& path, uint64_t seed, std::chrono::milliseconds length) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return 1;
  struct stat st {};
  ::fstat(fd, &st);
  const auto size = static_cast<std::size_t>(st.st_size);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return 1;
  auto* base = static_cast<unsigned char*>(p);
  // Private copies: the scribbler overwrites these fields itself.
  const auto* header = reinterpret_cast<const ivshmfs_header*>(base);
  const std::size_t metadata = std::min<std::size_t>(header->data_offset, size);
  const std::size_t controls = header->control_offset;
  const std::size_t controls_size = header->partition_count * sizeof(ivshmfs_control);
  if (controls + controls_size > metadata || controls_size == 0) return 1;
  std::mt19937_64 rng(seed);
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const auto elapsed = std::chrono::steady_clock::now() - start;
    if (elapsed > length) break;
    std::size_t offset = 0;
    if (elapsed > length * 4 / 5) {
      offset = rng() % metadata;
    } else if (elapsed > length * 3 / 5) {
      offset = 32 + rng() % (metadata - 32);  // spares the magic (0) and the format id (24)
    } else {
      offset = controls + rng() % controls_size;
    }
    const uint64_t value = rng();
    switch (rng() % 4) {
      case 0:  // a small number, e.g. a length or an odd generation
        std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(base + offset / 8 * 8))
            .store(value % 100000, std::memory_order_relaxed);
        break;
      case 1:  // a whole random word
        std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(base + offset / 8 * 8))
            .store(value, std::memory_order_relaxed);
        break;
      default:  // one byte
        reinterpret_cast<volatile unsigned char*>(base)[offset] = static_cast<unsigned char>(value);
    }
    if (rng() % 64 == 0) std::this_thread::sleep_for(1ms);
  }
  ::munmap(p, size);
  return 0;
}

// Issue 9, "make it systematic": a live scribbler against daemons (the
// sanitizer tree runs its sanitizer-built daemons) serving readers and
// writers, restarted now and then. No crash, no sanitizer report, only clear
// errors, every daemon unmounts cleanly; a daemon started on a scribbled
// region either serves it or refuses it with a message and status 1.
TEST_F(BackendFaults, LiveScribblerPeer) {
  const uint64_t seed = run_seed();
  const auto length = run_length(40s);
  SCOPED_TRACE("seed " + std::to_string(seed) + " (repeat with IVSHMFS_FAULT_SEED=" + std::to_string(seed) + ")");
  std::printf("scribbler: seed %llu, %lld ms\n", static_cast<unsigned long long>(seed),
              static_cast<long long>(length.count()));
  std::mt19937_64 rng(seed);
  RegionFile region(1 << 20, 2);
  ScratchDir dir("scribble");
  std::vector<std::unique_ptr<TempDir>> dirs;
  std::vector<std::unique_ptr<Daemon>> daemons;
  std::vector<std::string> logs;  // of every daemon that ran
  auto config = [&](std::size_t i) {
    return i < 2 ? Daemon::Config{region.path(), dirs[i]->path(), static_cast<uint32_t>(i)}
                 : Daemon::Config{region.path(), dirs[i]->path(), std::nullopt, {"ro"}};
  };
  for (std::size_t i = 0; i < 3; ++i) {
    dirs.push_back(std::make_unique<TempDir>("fault-scribble-" + std::to_string(i)));
    daemons.push_back(std::make_unique<Daemon>(config(i)));
    ASSERT_TRUE(daemons[i]->start()) << daemons[i]->log();
  }
  std::vector<Child> load;
  for (std::size_t i = 0; i < 2; ++i) {
    const std::string file = daemons[i]->file("vm" + std::to_string(i));
    load.emplace_back(dir.file("writer.log"),
                      [&, file, i] { return write_loop(file, dir.file("writer-errors-" + std::to_string(i))); });
  }
  for (std::size_t i = 0; i < 3; ++i) {
    const std::string mnt = dirs[i]->path();
    load.emplace_back(dir.file("reader.log"),
                      [&, mnt, i] { return read_loop(mnt, 2, dir.file("reader-errors-" + std::to_string(i))); });
  }
  const uint64_t scribbler_seed = rng();
  Child scribbler(dir.file("scribbler.log"), [&] { return scribble(region.path(), scribbler_seed, length); });

  int restarts = 0;
  int refused = 0;
  int status_runs = 0;
  while (!scribbler.poll()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng() % 1500));
    // ivshmctl on the scribbled region: a table or an error, never a crash.
    const std::string log = dir.file("status.log");
    const int st = fstest::run_program({IVSHMCTL_PATH, "status", region.path()}, log);
    ++status_runs;
    EXPECT_TRUE(st == 0 || st == 1) << "ivshmctl status on a scribbled region: status " << st << "\n" << slurp(log);
    EXPECT_FALSE(has_sanitizer_report(slurp(log))) << slurp(log);
    // Restart one daemon now and then: Region::open meets the scribbled header.
    const std::size_t i = rng() % 3;
    Daemon& d = *daemons[i];
    if (d.exit_status()) {
      // It had refused the region at its start: that was checked then.
    } else {
      ASSERT_TRUE(alive(d)) << "a daemon died under the scribbler:\n" << d.log();
    }
    if (rng() % 3 == 0) {
      d.stop();
      if (!d.exit_status()) {
        ADD_FAILURE() << "a daemon did not stop";
      }
      logs.push_back(d.log());
      daemons[i] = std::make_unique<Daemon>(config(i));
      ++restarts;
      if (!daemons[i]->start()) {
        ++refused;
        const auto status = daemons[i]->wait_exit();
        EXPECT_EQ(status.value_or(-1), 1) << "a daemon started on a scribbled region neither served nor refused it "
                                             "with status 1:\n"
                                          << daemons[i]->log();
        EXPECT_NE(daemons[i]->log().find("error"), std::string::npos)
            << "a daemon refused the region without saying why:\n"
            << daemons[i]->log();
      }
    }
  }
  EXPECT_EQ(scribbler.poll().value_or(-1), 0) << scribbler.log();
  for (auto& c : load) {
    EXPECT_FALSE(c.poll()) << "a reader or writer died:\n" << c.log();
    c.kill_and_reap();
  }
  for (auto& d : daemons) {
    if (!d->exit_status()) {
      EXPECT_TRUE(alive(*d)) << d->log();
      d->stop();
      EXPECT_EQ(d->exit_status().value_or(-1), 0) << "a daemon did not unmount cleanly:\n" << d->log();
    }
    logs.push_back(d->log());
  }
  for (const auto& log : logs) EXPECT_FALSE(has_sanitizer_report(log)) << log;
  // Clear errors only. A restart unmounts for a moment: ENOENT (the bare
  // mount point) and ENOTCONN (a descriptor of the old mount) come from that;
  // a daemon that died is caught above by its status, not here. EUCLEAN is
  // the scribbler overwriting the magic but not the format id: a damaged
  // header, reported as such rather than as a new format.
  const std::set<int> clear = {EIO, EAGAIN, ENOSPC, ENOENT, ENOTCONN, EUCLEAN};
  // Readers read through the page cache (the default). The writers reset
  // their partitions whenever they fill (several times a second here), and
  // the scribbler rewrites generation fields: a cached read that meets a
  // generation the cache does not hold yet, or a page past the end the
  // kernel still has the old size for, fails with ESTALE, the documented
  // error of that race (docs/filesystem.md, Coherence and Errors at a
  // glance), rather than caching bytes of two generations. Writers never
  // meet it.
  std::set<int> clear_for_readers = clear;
  clear_for_readers.insert(ESTALE);
  for (std::size_t i = 0; i < 3; ++i) {
    expect_only(errnos_in(dir.file("reader-errors-" + std::to_string(i))), clear_for_readers,
                "reader " + std::to_string(i));
  }
  for (std::size_t i = 0; i < 2; ++i) {
    expect_only(errnos_in(dir.file("writer-errors-" + std::to_string(i))), clear, "writer " + std::to_string(i));
  }
  std::printf("  %d ivshmctl status runs, %d daemon restarts, %d refused the region\n", status_runs, restarts, refused);
}

}  // namespace
}  // namespace ivshmfs::faulttest
