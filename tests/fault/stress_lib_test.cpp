// SPDX-License-Identifier: MIT
// Fault injection through the library: owner processes append self-checking
// records to several partitions and acknowledge each one after append
// returned; reader processes check every record they read; the test kills,
// stops and resumes owners and takes partitions over (restart after SIGKILL,
// --force, a stale claim) at random moments. Every run ends with the
// invariant of records.hpp on every partition. The seed is in every failure
// message: IVSHMFS_FAULT_SEED=N repeats a run, IVSHMFS_FAULT_SECONDS=S
// lengthens it.
#include <signal.h>

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
#include "ivshmfs/writer.hpp"
#include "process_support.hpp"
#include "records.hpp"

namespace ivshmfs::faulttest {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kPartitions = 3;
constexpr uint64_t kRegionSize = 4 << 20;  // ~1.3 MiB a partition: resets happen
constexpr auto kStale = 300ms;             // stale claims in this test

// Exit codes of an owner process.
constexpr int kDisplaced = 3;  // its claim was taken over: the only way it may stop
constexpr int kCorrupt = 4;    // it found committed bytes that break the invariant
constexpr int kRefused = 6;    // its takeover was refused (see run_owner)

std::shared_ptr<Region> open_rw(const std::string& path) {
  RegionOpenOptions o;
  o.writable = true;
  auto r = Region::open_path(path, o);
  if (!r) {
    std::fprintf(stderr, "open %s: %s\n", path.c_str(), r.error().message.c_str());
    return nullptr;
  }
  return std::move(r).value();
}

// An owner: claims the partition (retrying while a live owner holds it),
// continues the record sequence it finds committed, then appends records and
// now and then resets, acknowledging each after it returned.
int run_owner(const std::string& path, uint32_t id, uint64_t incarnation, const std::string& ack_path, bool force,
              uint64_t seed) {
  auto region = open_rw(path);
  if (!region) return 1;
  ClaimOptions claim;
  claim.force = force;
  claim.heartbeat_interval = 50ms;
  claim.liveness.stale_after = kStale;
  std::unique_ptr<PartitionWriter> writer;
  for (int attempt = 0;; ++attempt) {
    auto w = PartitionWriter::claim(region, id, claim);
    if (w) {
      writer = std::move(w).value();
      break;
    }
    // Refused as "claimed" although forced, or long after the owner's
    // heartbeat went stale: the takeover itself was refused, as it is when
    // a second paused owner would need a fence while the partition already
    // has one (a clear error; the partition stays with the paused owner).
    if (w.error().code == Errc::claimed && (force || attempt > 80)) {
      std::fprintf(stderr, "owner %llu: takeover refused: %s\n", static_cast<unsigned long long>(incarnation),
                   w.error().message.c_str());
      return kRefused;
    }
    if (w.error().code != Errc::claimed) {
      std::fprintf(stderr, "owner %llu: claim: %s\n", static_cast<unsigned long long>(incarnation),
                   w.error().message.c_str());
      return 1;
    }
    std::this_thread::sleep_for(25ms);
  }
  const PartitionInfo& p = writer->partition();
  std::vector<std::byte> committed(p.capacity);
  uint64_t generation = 0;
  auto n = region->read(id, 0, committed, &generation);
  if (!n) {
    std::fprintf(stderr, "owner: read: %s\n", n.error().message.c_str());
    return 1;
  }
  std::string error;
  auto records = parse_records({committed.data(), *n}, generation, error);
  if (!error.empty()) {
    std::fprintf(stderr, "owner %llu: partition %u as claimed: %s\n", static_cast<unsigned long long>(incarnation), id,
                 error.c_str());
    return kCorrupt;
  }
  uint64_t seq = records.size() + 1;
  const int ack = ::open(ack_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (ack < 0) return 1;
  std::mt19937_64 rng(seed);
  std::vector<std::byte> record(kMaxRecord);
  for (;;) {
    // Half the records are large, so a stop often lands inside the copy.
    const std::size_t size = kHeaderSize + rng() % ((rng() % 2 == 0 ? 2048 : kMaxRecord) - kHeaderSize);
    auto displaced_or_failed = [&](const char* what, const Error& e) {
      std::fprintf(stderr, "owner %llu: %s: %s\n", static_cast<unsigned long long>(incarnation), what,
                   e.message.c_str());
      return e.code == Errc::not_owner || e.code == Errc::reformatted ? kDisplaced : 1;
    };
    // The room left, asked of the writer: a record never goes in part, and
    // the room is not simply capacity minus length (a takeover may have
    // fenced some of the data area off for good).
    bool full = false;
    {
      auto room = writer->reserve(size);
      if (!room && room.error().code != Errc::no_space) return displaced_or_failed("reserve", room.error());
      full = !room || room->bytes().size() < size;
    }
    if (rng() % 400 == 0 || full) {
      if (auto r = writer->reset(); !r) return displaced_or_failed("reset", r.error());
      auto s = region->snapshot(id);
      if (!s) return 1;
      generation = s->generation;
      seq = 1;
      if (!write_ack(ack, {generation, 0, incarnation, 0})) return 1;
      continue;
    }
    make_record({record.data(), size}, generation, seq, incarnation);
    if (seq % 2 == 0) {
      auto r = writer->append({record.data(), size});
      if (!r) return displaced_or_failed("append", r.error());
      if (*r != size) {
        std::fprintf(stderr, "owner: append took %zu of %zu bytes with room left\n", *r, size);
        return 1;
      }
    } else {  // the other way in: a reservation filled in place
      auto room = writer->reserve(size);
      if (!room) return displaced_or_failed("reserve", room.error());
      if (room->bytes().size() < size) {
        std::fprintf(stderr, "owner: the room shrank from one reservation to the next\n");
        return 1;
      }
      std::memcpy(room->bytes().data(), record.data(), size);
      if (room->commit(size) != size) {
        // Nothing published: a takeover fenced the reservation off.
        std::fprintf(stderr, "owner %llu: commit published nothing\n", static_cast<unsigned long long>(incarnation));
        return writer->owns() ? 1 : kDisplaced;
      }
    }
    RecordHeader h{};
    std::memcpy(&h, record.data(), kHeaderSize);
    if (!write_ack(ack, {generation, seq, incarnation, h.checksum})) return 1;
    ++seq;
  }
}

// A reader: reads every partition whole, again and again, and checks it.
int run_reader(const std::string& path) {
  RegionOpenOptions o;
  auto opened = Region::open_path(path, o);
  if (!opened) return 1;
  auto region = std::move(opened).value();
  std::vector<std::byte> buffer(kRegionSize);
  for (uint64_t round = 0;; ++round) {
    for (const auto& p : region->partitions()) {
      uint64_t generation = 0;
      auto n = region->read(p.id, 0, buffer, &generation);
      if (!n) {
        if (n.error().code == Errc::busy) continue;  // an owner killed mid-reset; the next one repairs it
        std::fprintf(stderr, "reader: partition %u: %s\n", p.id, n.error().message.c_str());
        return 1;
      }
      std::string error;
      parse_records({buffer.data(), *n}, generation, error);
      if (!error.empty()) {
        std::fprintf(stderr, "reader: partition %u, generation %llu, round %llu: %s\n", p.id,
                     static_cast<unsigned long long>(generation), static_cast<unsigned long long>(round),
                     error.c_str());
        return kCorrupt;
      }
    }
  }
}

enum class Fault { kill, stop_resume, force_takeover, stale_takeover };

const char* name(Fault f) {
  switch (f) {
    case Fault::kill: return "SIGKILL+restart";
    case Fault::stop_resume: return "SIGSTOP+SIGCONT";
    case Fault::force_takeover: return "SIGSTOP+forced takeover+SIGCONT";
    case Fault::stale_takeover: return "SIGSTOP+stale takeover+SIGCONT";
  }
  return "?";
}

struct Owner {
  Child process;
  uint64_t incarnation = 0;
};

void stress(const std::vector<Fault>& faults, std::chrono::milliseconds fallback_length) {
  const uint64_t seed = run_seed();
  const auto length = run_length(fallback_length);
  SCOPED_TRACE("seed " + std::to_string(seed) + " (repeat with IVSHMFS_FAULT_SEED=" + std::to_string(seed) + ")");
  std::printf("fault stress: seed %llu, %lld ms\n", static_cast<unsigned long long>(seed),
              static_cast<long long>(length.count()));
  std::mt19937_64 rng(seed);
  ScratchDir dir("lib");
  ASSERT_FALSE(dir.path().empty());
  const std::string region_path = "/dev/shm/ivshmfs-fault-lib-" + std::to_string(::getpid());
  struct Unlink {
    std::string p;
    ~Unlink() { ::unlink(p.c_str()); }
  } unlink_region{region_path};
  {
    auto backend = Backend::open(region_path, BackendOptions{true, true, kRegionSize});
    ASSERT_TRUE(backend) << backend.error().message;
    ASSERT_TRUE(Region::format(**backend, FormatOptions{kPartitions, true}));
  }

  uint64_t next_incarnation = 1;
  std::vector<uint64_t> all_incarnations[kPartitions];
  auto ack_file = [&](uint64_t inc) { return dir.file("ack-" + std::to_string(inc)); };
  auto start_owner = [&](uint32_t id, bool force) {
    Owner o;
    o.incarnation = next_incarnation++;
    all_incarnations[id].push_back(o.incarnation);
    const uint64_t child_seed = rng();
    const std::string acks = ack_file(o.incarnation);
    o.process = Child(dir.file("owner-" + std::to_string(o.incarnation) + ".log"), [&, id, force, child_seed, acks] {
      return run_owner(region_path, id, o.incarnation, acks, force, child_seed);
    });
    return o;
  };

  // An owner opens its acknowledgement file once it holds the claim: a fault
  // is only injected into an owner that got that far, and a paused owner is
  // only resumed once its successor did (else the two would still be racing
  // for the claim, which is not what these tests are about).
  auto wait_claimed = [&](Owner& o) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (::access(ack_file(o.incarnation).c_str(), F_OK) != 0) {
      if (o.process.poll() || std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(2ms);
    }
    return true;
  };
  std::vector<Owner> owners;
  for (uint32_t id = 0; id < kPartitions; ++id) owners.push_back(start_owner(id, false));
  std::vector<Child> readers;
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back(dir.file("reader-" + std::to_string(i) + ".log"), [&] { return run_reader(region_path); });
  }
  std::vector<Owner> displaced;  // stopped owners another one took over from
  std::map<std::string, int> counts;
  std::string refusals;  // why takeovers were refused

  auto failure_context = [&] {  // the end of every log that says something
    std::string out;
    auto add = [&](const std::string& who, const Child& c) {
      if (const std::string log = c.log_tail(); !log.empty()) out += who + " log: " + log + "\n";
    };
    for (auto& r : readers) add("reader", r);
    for (auto& o : owners) add("owner " + std::to_string(o.incarnation), o.process);
    for (auto& o : displaced) add("displaced owner " + std::to_string(o.incarnation), o.process);
    return out;
  };

  const auto until = std::chrono::steady_clock::now() + length;
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 250));
    const uint32_t id = static_cast<uint32_t>(rng() % kPartitions);
    const Fault fault = faults[rng() % faults.size()];
    Owner& owner = owners[id];
    if (!wait_claimed(owner)) {
      FAIL() << "owner " << owner.incarnation << " of partition " << id << " did not claim it within 20 s (status "
             << owner.process.poll().value_or(-1) << ")\n"
             << failure_context();
    }
    if (auto st = owner.process.poll()) {
      FAIL() << "owner " << owner.incarnation << " of partition " << id << " exited by itself (status " << *st << ")\n"
             << failure_context();
    }
    ++counts[name(fault)];
    switch (fault) {
      case Fault::kill:
        owner.process.signal(SIGKILL);
        owner.process.wait(10s);
        owner = start_owner(id, false);
        break;
      case Fault::stop_resume:
        owner.process.signal(SIGSTOP);
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 100));
        owner.process.signal(SIGCONT);
        break;
      case Fault::force_takeover:
      case Fault::stale_takeover: {
        owner.process.signal(SIGSTOP);
        Owner old = std::move(owner);
        owner = start_owner(id, fault == Fault::force_takeover);
        // Let the new owner claim (after kStale for a stale claim) and append.
        if (!wait_claimed(owner)) {
          if (owner.process.poll() == kRefused) {
            // A takeover refused with a clear error: the paused owner keeps
            // the partition and goes on.
            ++counts["takeover refused"];
            refusals += owner.process.log_tail(400);
            owner = std::move(old);
            owner.process.signal(SIGCONT);
            break;
          }
          FAIL() << "owner " << owner.incarnation << " did not take partition " << id << " over within 20 s\n"
                 << failure_context();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
        old.process.signal(SIGCONT);
        displaced.push_back(std::move(old));
        break;
      }
    }
    for (auto& r : readers) {
      if (auto st = r.poll()) FAIL() << "a reader stopped (status " << *st << ")\n" << failure_context();
    }
    // A displaced owner must notice and stop; it may not exit any other way.
    for (auto& d : displaced) {
      if (auto st = d.process.poll(); st && *st != kDisplaced) {
        FAIL() << "displaced owner " << d.incarnation << " exited with status " << *st << ", not " << kDisplaced
               << " (lost claim)\n"
               << failure_context();
      }
    }
  }
  for (auto& d : displaced) {
    auto st = d.process.wait(5s);
    EXPECT_TRUE(st && *st == kDisplaced) << "displaced owner " << d.incarnation << " did not stop with status "
                                         << kDisplaced << " within 5 s of SIGCONT (status "
                                         << (st ? std::to_string(*st) : "none: still running") << ")\n"
                                         << d.process.log();
  }
  for (auto& r : readers) {
    EXPECT_FALSE(r.poll()) << "a reader stopped early\n" << r.log();
    r.kill_and_reap();
  }
  for (auto& o : owners) o.process.kill_and_reap();
  for (auto& d : displaced) d.process.kill_and_reap();
  for (auto& [what, count] : counts) std::printf("  %s: %d\n", what.c_str(), count);
  if (!refusals.empty()) std::printf("  refusals:\n%s\n", refusals.c_str());

  // The invariant, partition by partition.
  RegionOpenOptions o;
  auto region = Region::open_path(region_path, o);
  ASSERT_TRUE(region) << region.error().message;
  for (uint32_t id = 0; id < kPartitions; ++id) {
    std::vector<Ack> acks;
    for (uint64_t inc : all_incarnations[id]) {
      auto more = read_acks(ack_file(inc));
      acks.insert(acks.end(), more.begin(), more.end());
    }
    const PartitionInfo* p = (*region)->find(id);
    ASSERT_NE(p, nullptr);
    std::vector<std::byte> committed(p->capacity);
    uint64_t generation = 0;
    auto n = (*region)->read(id, 0, committed, &generation);
    if (!n && n.error().code == Errc::busy) {
      // The last owner died mid-reset: what a new owner's claim repairs.
      auto w = PartitionWriter::claim(*region, id, ClaimOptions{{0ms}, 0ms, true});
      ASSERT_TRUE(w) << w.error().message;
      n = (*region)->read(id, 0, committed, &generation);
    }
    ASSERT_TRUE(n) << n.error().message;
    const std::string broken = check_partition({committed.data(), *n}, generation, acks);
    EXPECT_EQ(broken, "") << "partition " << id << " (generation " << generation << ", " << *n << " bytes, "
                          << acks.size() << " acknowledgements from " << all_incarnations[id].size()
                          << " owners) breaks the invariant\n"
                          << failure_context();
    std::printf("  partition %u: generation %llu, %zu bytes, %zu acknowledgements, %zu owners\n", id,
                static_cast<unsigned long long>(generation), *n, acks.size(), all_incarnations[id].size());
  }
}

// Owners killed (and restarted at once: a dead local owner's claim is taken
// over) or paused and resumed, without another owner in between.
TEST(FaultStress, KillAndPauseOwners) { stress({Fault::kill, Fault::stop_resume}, 12s); }

// Paused owners whose partition is taken over (forced, or once their claim is
// stale) and who then resume: they must stop without publishing, and no
// acknowledged byte of either owner may change (issue 9, item 1). Disabled
// until the announce/publish protocol of the takeover work lands: today a
// resumed owner finishes its copy into bytes the new owner published (about
// one run in two or three sees it).
TEST(FaultStress, TakeoversOfPausedOwners) {
  stress({Fault::kill, Fault::force_takeover, Fault::stale_takeover, Fault::stop_resume}, 15s);
}

}  // namespace
}  // namespace ivshmfs::faulttest
