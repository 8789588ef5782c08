// SPDX-License-Identifier: MIT
// Fault injection through mounted daemons: writer processes append
// self-checking records through each owner's mount (one write(2) per record,
// from a page-aligned buffer) and acknowledge each after write returned;
// readers check every record they read through a read-only peer's mount; the
// test kills the owners' daemons with SIGKILL and starts them again with the
// same id, and pauses them with SIGSTOP/SIGCONT, at random moments. One test
// also lets a paused daemon's claim go stale, mounts a new daemon with the
// same id elsewhere, and then resumes the old one. Every run ends with the
// invariant of records.hpp. IVSHMFS_FAULT_SEED=N repeats a run.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "ivshmfs/region.hpp"
#include "mount_support.hpp"
#include "process_support.hpp"
#include "records.hpp"

namespace ivshmfs::faulttest {
namespace {

using namespace std::chrono_literals;
using fstest::Daemon;
using fstest::RegionFile;
using fstest::TempDir;

constexpr uint32_t kPartitions = 2;
constexpr uint64_t kRegionSize = 1 << 20;
constexpr int kCorrupt = 4;

// One consistent look at a partition through the library, read-only.
struct Look {
  uint64_t generation = 0;
  uint64_t capacity = 0;
  bool ok = false;
};
Look look(const std::string& region_path, uint32_t id) {
  auto region = Region::open_path(region_path, RegionOpenOptions{});
  if (!region) return {};
  auto s = (*region)->stat(id);
  if (!s) return {};
  return {s->generation, s->capacity, true};
}

// Everything read(2) yields from `path`, or nullopt on an error.
std::optional<std::vector<std::byte>> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::vector<std::byte> out;
  std::vector<std::byte> buf(1 << 17);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  ::close(fd);
  return out;
}

// The file a writer uses: the first line of `route` (the parent points it
// at another mount after a takeover).
std::string current_file(const std::string& route) {
  std::string s = slurp(route);
  while (!s.empty() && (s.back() == '\n')) s.pop_back();
  return s;
}

// A writer: appends records through the mount; after any failed write (the
// daemon was killed or lost its claim) it starts a new incarnation from what
// is committed, since the failed record may or may not have been committed.
int run_writer(const std::string& route, const std::string& region_path, uint32_t id, uint64_t first_incarnation,
               const std::string& ack_path, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int ack = ::open(ack_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (ack < 0) return 1;
  void* raw = nullptr;
  if (::posix_memalign(&raw, 4096, kMaxMountRecord) != 0) return 1;
  auto* record = static_cast<std::byte*>(raw);
  for (uint64_t incarnation = first_incarnation;; ++incarnation) {
    const std::string file = current_file(route);
    const int fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
      std::this_thread::sleep_for(10ms);
      continue;
    }
    // Where the sequence stands: the committed bytes, from one generation.
    Look before = look(region_path, id);
    auto contents = read_file(file);
    Look after = look(region_path, id);
    if (!contents || !before.ok || !after.ok || before.generation != after.generation) {
      ::close(fd);
      std::this_thread::sleep_for(10ms);
      continue;
    }
    uint64_t generation = after.generation;
    std::string error;
    auto records = parse_records(*contents, generation, error);
    if (!error.empty()) {
      std::fprintf(stderr, "writer %llu: %s as found: %s\n", static_cast<unsigned long long>(incarnation), file.c_str(),
                   error.c_str());
      return kCorrupt;
    }
    uint64_t seq = records.size() + 1;
    uint64_t length = contents->size();
    for (;;) {
      const std::size_t size = kHeaderSize + rng() % (kMaxMountRecord - kHeaderSize + 1);
      // Reset well before the end: a takeover may fence off, for good, as
      // much of the data area as one write in flight (a page here), and a
      // write that does not fit would be cut.
      if (after.capacity - length < size + 4 * kMaxMountRecord) {
        if (::ftruncate(fd, 0) != 0) break;
        Look reset = look(region_path, id);
        if (!reset.ok) break;
        generation = reset.generation;
        seq = 1;
        length = 0;
        if (!write_ack(ack, {generation, 0, incarnation, 0})) return 1;
        continue;
      }
      make_record({record, size}, generation, seq, incarnation);
      const ssize_t n = ::write(fd, record, size);
      if (n < 0) break;
      if (static_cast<std::size_t>(n) != size) {
        std::fprintf(stderr, "writer: a write of %zu bytes took %zd: a partial record\n", size, n);
        return kCorrupt;
      }
      RecordHeader h{};
      std::memcpy(&h, record, kHeaderSize);
      if (!write_ack(ack, {generation, seq, incarnation, h.checksum})) return 1;
      ++seq;
      length += size;
    }
    ::close(fd);
  }
}

// A reader through a read-only peer's mount. A read of several FUSE
// requests may straddle a reset, so a bad parse only counts when the
// partition's generation was the same before and after it.
int run_reader(const std::string& mountpoint, const std::string& region_path) {
  for (uint64_t round = 0;; ++round) {
    for (uint32_t id = 0; id < kPartitions; ++id) {
      const Look before = look(region_path, id);
      auto contents = read_file(mountpoint + "/vm" + std::to_string(id));
      const int read_errno = errno;  // before look() clobbers it
      const Look after = look(region_path, id);
      if (!contents) {
        // EAGAIN: a daemon killed mid-reset left the generation odd until
        // its successor repairs it.
        if (read_errno == EAGAIN) continue;
        // ESTALE: a read through the page cache that straddled a reset and
        // needed bytes past the new generation's end while the kernel still
        // knew the old size (docs/filesystem.md, Coherence). Only then.
        if (read_errno == ESTALE && (!before.ok || !after.ok || before.generation != after.generation)) continue;
        std::fprintf(stderr, "reader: vm%u: %s\n", id, std::strerror(read_errno));
        return 1;
      }
      if (!before.ok || !after.ok || before.generation != after.generation) continue;
      std::string error;
      parse_records(*contents, after.generation, error);
      if (!error.empty()) {
        std::fprintf(stderr, "reader: vm%u, generation %llu, round %llu: %s\n", id,
                     static_cast<unsigned long long>(after.generation), static_cast<unsigned long long>(round),
                     error.c_str());
        return kCorrupt;
      }
    }
  }
}

void write_text(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".new";
  {
    std::ofstream out(tmp);
    out << text << "\n";
  }
  ::rename(tmp.c_str(), path.c_str());
}

void mount_stress(std::chrono::milliseconds fallback_length, bool stale_takeover) {
  if (auto missing = fstest::missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
  const uint64_t seed = run_seed();
  const auto length = run_length(fallback_length);
  SCOPED_TRACE("seed " + std::to_string(seed) + " (repeat with IVSHMFS_FAULT_SEED=" + std::to_string(seed) + ")");
  std::printf("mount fault stress: seed %llu, %lld ms\n", static_cast<unsigned long long>(seed),
              static_cast<long long>(length.count()));
  std::mt19937_64 rng(seed);
  ScratchDir dir("mount");
  ASSERT_FALSE(dir.path().empty());
  RegionFile region(kRegionSize, kPartitions);
  TempDir ro_dir("fault-ro");
  std::vector<std::unique_ptr<TempDir>> dirs;
  std::vector<std::unique_ptr<Daemon>> owners;
  for (uint32_t id = 0; id < kPartitions; ++id) {
    dirs.push_back(std::make_unique<TempDir>("fault-vm" + std::to_string(id)));
    owners.push_back(std::make_unique<Daemon>(Daemon::Config{region.path(), dirs[id]->path(), id}));
    ASSERT_TRUE(owners[id]->start()) << "vm" << id << " did not mount:\n" << owners[id]->log();
  }
  Daemon ro(Daemon::Config{region.path(), ro_dir.path(), std::nullopt, {"ro"}});
  ASSERT_TRUE(ro.start()) << "the read-only peer did not mount:\n" << ro.log();

  std::vector<Child> writers;
  std::vector<std::string> routes;
  for (uint32_t id = 0; id < kPartitions; ++id) {
    routes.push_back(dir.file("route-" + std::to_string(id)));
    write_text(routes[id], dirs[id]->path() + "/vm" + std::to_string(id));
    const uint64_t child_seed = rng();
    writers.emplace_back(dir.file("writer-" + std::to_string(id) + ".log"), [&, id, child_seed] {
      return run_writer(routes[id], region.path(), id, (id + 1) * 1'000'000, dir.file("ack-" + std::to_string(id)),
                        child_seed);
    });
  }
  std::vector<Child> readers;
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back(dir.file("reader-" + std::to_string(i) + ".log"),
                         [&] { return run_reader(ro_dir.path(), region.path()); });
  }
  auto context = [&] {
    std::string out;
    for (auto& w : writers) out += "writer log: " + w.log_tail() + "\n";
    for (auto& r : readers) out += "reader log: " + r.log_tail() + "\n";
    for (auto& d : owners) {
      const std::string log = d->log();
      out += "daemon log: " + (log.size() > 1500 ? "..." + log.substr(log.size() - 1500) : log) + "\n";
    }
    return out;
  };

  std::map<std::string, int> counts;
  std::unique_ptr<TempDir> takeover_dir;
  std::unique_ptr<Daemon> paused;  // the daemon whose claim a new one took over
  const auto started = std::chrono::steady_clock::now();
  const auto until = started + length;
  bool took_over = false;
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));
    const uint32_t id = static_cast<uint32_t>(rng() % kPartitions);
    Daemon& d = *owners[id];
    if (d.exit_status() || ::kill(d.pid(), 0) != 0) {
      FAIL() << "the vm" << id << " daemon died by itself\n" << d.log() << context();
    }
    const unsigned dice = static_cast<unsigned>(rng() % 10);
    if (stale_takeover && !took_over && std::chrono::steady_clock::now() - started > 2s) {
      // Pause the owner past the stale time (5 s), mount a new daemon with
      // the same id elsewhere (it takes the stale claim over), move the
      // writer there, let it write, then resume the old daemon.
      took_over = true;
      ++counts["SIGSTOP, stale takeover, SIGCONT"];
      d.signal(SIGSTOP);
      std::this_thread::sleep_for(5500ms);
      takeover_dir = std::make_unique<TempDir>("fault-takeover");
      auto fresh = std::make_unique<Daemon>(Daemon::Config{region.path(), takeover_dir->path(), id});
      ASSERT_TRUE(fresh->start()) << "the new vm" << id << " daemon did not take the stale claim over:\n"
                                  << fresh->log();
      write_text(routes[id], takeover_dir->path() + "/vm" + std::to_string(id));
      std::this_thread::sleep_for(300ms);
      d.signal(SIGCONT);
      paused = std::move(owners[id]);
      owners[id] = std::move(fresh);
      std::swap(dirs[id], takeover_dir);
    } else if (dice < 5) {
      ++counts["SIGKILL, restart"];
      d.kill9();
      owners[id] = std::make_unique<Daemon>(Daemon::Config{region.path(), dirs[id]->path(), id});
      ASSERT_TRUE(owners[id]->start()) << "vm" << id << " did not mount again after SIGKILL:\n" << owners[id]->log();
    } else {
      ++counts["SIGSTOP, SIGCONT"];
      d.signal(SIGSTOP);
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
      d.signal(SIGCONT);
    }
    for (auto& r : readers) {
      if (auto st = r.poll()) FAIL() << "a reader stopped (status " << *st << ")\n" << context();
    }
    for (auto& w : writers) {
      if (auto st = w.poll()) FAIL() << "a writer stopped (status " << *st << ")\n" << context();
    }
  }
  for (auto& w : writers) w.kill_and_reap();
  for (auto& r : readers) r.kill_and_reap();
  if (paused) {
    // The resumed daemon lost its claim: it stays up (its writes fail) and
    // unmounts cleanly.
    EXPECT_FALSE(paused->exit_status()) << "the displaced daemon died:\n" << paused->log();
    paused->stop();
    EXPECT_EQ(paused->exit_status().value_or(-1), 0) << paused->log();
  }
  for (auto& [what, count] : counts) std::printf("  %s: %d\n", what.c_str(), count);
  if (stale_takeover) {
    EXPECT_TRUE(took_over) << "the run was too short for the takeover";
  }

  for (uint32_t id = 0; id < kPartitions; ++id) {
    auto r = Region::open_path(region.path(), RegionOpenOptions{});
    ASSERT_TRUE(r) << r.error().message;
    const PartitionInfo* p = (*r)->find(id);
    std::vector<std::byte> committed(p->capacity);
    uint64_t generation = 0;
    auto n = (*r)->read(id, 0, committed, &generation);
    ASSERT_TRUE(n) << n.error().message;
    const auto acks = read_acks(dir.file("ack-" + std::to_string(id)));
    const std::string broken = check_partition({committed.data(), *n}, generation, acks);
    EXPECT_EQ(broken, "") << "vm" << id << " (generation " << generation << ", " << *n << " bytes, " << acks.size()
                          << " acknowledgements) breaks the invariant\n"
                          << context();
    std::printf("  vm%u: generation %llu, %zu bytes, %zu acknowledgements\n", id,
                static_cast<unsigned long long>(generation), *n, acks.size());
  }
  for (auto& d : owners) {
    d->stop();
    EXPECT_EQ(d->exit_status().value_or(-1), 0) << "a daemon did not unmount cleanly:\n" << d->log();
  }
  ro.stop();
  EXPECT_EQ(ro.exit_status().value_or(-1), 0) << ro.log();
}

TEST(MountFaultStress, KillAndPauseDaemons) { mount_stress(15s, false); }

// Issue 9, item 1 through the filesystem: the paused daemon must not publish
// after it resumes, and nothing either daemon acknowledged may change.
TEST(MountFaultStress, StaleTakeoverOfPausedDaemon) { mount_stress(12s, true); }

// The process state letter of `pid` ('T' when stopped), or 0.
char process_state(pid_t pid) {
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '\0';
}

// Issue 9, item 1, deterministic and through the filesystem: the owner's
// daemon stops itself between copying a write into the data area and
// publishing it (the writer.before-publish fail point: the daemon's writes
// go through a reservation and its commit), its claim goes stale, a
// new daemon with the same id takes the partition over and appends; then the
// old one resumes. Its write must fail (EIO), and every byte the new owner
// acknowledged must stay as it was. Disabled until the takeover work's fail
// points and publish protocol land (today IVSHMFS_FAILPOINTS is ignored).
TEST(MountFaultStress, DaemonPausedAfterCopyNeverPublishes) {
  if (auto missing = fstest::missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
  ScratchDir dir("failpoint");
  ASSERT_FALSE(dir.path().empty());
  RegionFile region(kRegionSize, kPartitions);
  TempDir old_dir("fault-fp-old");
  TempDir new_dir("fault-fp-new");
  ::setenv("IVSHMFS_FAILPOINTS", "writer.before-publish=1*stop", 1);
  Daemon old_owner(Daemon::Config{region.path(), old_dir.path(), 0});
  const bool started = old_owner.start();
  ::unsetenv("IVSHMFS_FAILPOINTS");
  ASSERT_TRUE(started) << old_owner.log();

  const std::string acks = dir.file("acks");
  // One record through the old daemon: it stops inside this write.
  Child stalled(dir.file("stalled.log"), [&] {
    std::vector<std::byte> record(1000);
    make_record(record, 0, 1, 1);
    const int fd = ::open(old_owner.file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return 1;
    const ssize_t n = ::write(fd, record.data(), record.size());
    if (n == static_cast<ssize_t>(record.size())) {
      RecordHeader h{};
      std::memcpy(&h, record.data(), kHeaderSize);
      const int ack = ::open(acks.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      write_ack(ack, {0, 1, 1, h.checksum});
      std::printf("the resumed daemon's write returned success\n");
      return 0;
    }
    std::printf("write: %s\n", n < 0 ? std::strerror(errno) : "short");
    return n < 0 && errno == EIO ? 5 : 1;
  });
  ASSERT_TRUE(fstest::eventually([&] { return process_state(old_owner.pid()) == 'T'; }, 10s))
      << "the writer.before-publish fail point did not stop the daemon (IVSHMFS_FAILPOINTS unsupported?):\n"
      << old_owner.log();

  std::this_thread::sleep_for(5500ms);  // past the stale time: the claim is up for grabs
  Daemon new_owner(Daemon::Config{region.path(), new_dir.path(), 0});
  ASSERT_TRUE(new_owner.start()) << "the new daemon did not take the stale claim over:\n" << new_owner.log();
  const int ack = ::open(acks.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  ASSERT_GE(ack, 0);
  {
    const int fd = ::open(new_owner.file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::vector<std::byte> record(3000);
    for (uint64_t seq = 1; seq <= 3; ++seq) {
      make_record(record, 0, seq, 2);
      ASSERT_EQ(::write(fd, record.data(), record.size()), static_cast<ssize_t>(record.size())) << std::strerror(errno);
      RecordHeader h{};
      std::memcpy(&h, record.data(), kHeaderSize);
      write_ack(ack, {0, seq, 2, h.checksum});
    }
    ::close(fd);
  }
  ::close(ack);
  old_owner.signal(SIGCONT);
  const auto status = stalled.wait(10s);
  EXPECT_EQ(status.value_or(-1), 5) << "the displaced daemon's write did not fail with EIO: " << stalled.log();

  auto r = Region::open_path(region.path(), RegionOpenOptions{});
  ASSERT_TRUE(r) << r.error().message;
  std::vector<std::byte> committed(kRegionSize);
  uint64_t generation = 0;
  auto n = (*r)->read(0, 0, committed, &generation);
  ASSERT_TRUE(n) << n.error().message;
  EXPECT_EQ(check_partition({committed.data(), *n}, generation, read_acks(acks)), "")
      << "after the displaced daemon resumed";
  old_owner.stop();
  new_owner.stop();
  EXPECT_EQ(old_owner.exit_status().value_or(-1), 0) << old_owner.log();
  EXPECT_EQ(new_owner.exit_status().value_or(-1), 0) << new_owner.log();
}

}  // namespace
}  // namespace ivshmfs::faulttest
