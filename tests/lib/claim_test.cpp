// SPDX-License-Identifier: MIT
// Claims and liveness: a second claimer is refused, stale and vanished owners
// are taken over, a writer killed with SIGKILL loses nothing it committed,
// forced takeover stops the displaced writer, release on destruction, and a
// region formatted anew under an open writer.
#include <random>

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPartitions = 4;
constexpr uint64_t kCapacity = 64 * 1024;
constexpr uint64_t kSize = IVSHMFS_PAGE_SIZE + kPartitions * kCapacity;
constexpr uint64_t kSecond = 1'000'000'000ULL;

class ClaimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    format_file(file_.path(), kSize, kPartitions);
    region_ = open_region(file_.path(), true);
    ASSERT_NE(region_, nullptr);
  }

  // Makes partition `index` look claimed by another peer.
  // The PID namespace and start time default to this process's namespace
  // and "unknown".
  void forge_owner(uint32_t index, uint64_t host, uint64_t pid, uint64_t heartbeat_ns, uint64_t start_time = 0,
                   uint64_t pid_ns = local_process_identity().pid_ns) {
    RawMap raw(file_.path());
    ivshmfs_control* c = raw.control(index);
    poke(c->owner_pid, pid);
    poke(c->owner_host, host);
    poke(c->owner_pid_ns, pid_ns);
    poke(c->owner_start_time, start_time);
    poke(c->owner_since_ns, heartbeat_ns - 3600 * kSecond);
    poke(c->owner_heartbeat_ns, heartbeat_ns);
    poke(c->owner_token, 0x5eed5eed);
  }

  static uint64_t other_host() { return local_host_id() ^ 0x0123456789abcdefULL; }

  TempFile file_{"claim"};
  std::shared_ptr<Region> region_;
};

ClaimOptions stale_after(std::chrono::milliseconds ms) {
  ClaimOptions options;
  options.liveness.stale_after = ms;
  return options;
}

TEST_F(ClaimTest, SecondClaimerIsRefusedWithTheOwnersPid) {
  auto first = PartitionWriter::claim(region_, 1);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE((*first)->owns());
  // Through the same Region and through a second mapping of the file.
  auto other_mapping = open_region(file_.path(), true);
  for (const auto& region : {region_, other_mapping}) {
    auto second = PartitionWriter::claim(region, 1);
    ASSERT_FALSE(second.ok()) << "a second writer claimed a partition with a live owner";
    EXPECT_EQ(second.error().code, Errc::claimed) << second.error().message;
    const std::string& m = second.error().message;
    EXPECT_NE(m.find("pid " + std::to_string(::getpid())), std::string::npos) << "message lacks the owner: " << m;
    EXPECT_NE(m.find("since"), std::string::npos) << "message lacks since when: " << m;
    EXPECT_NE(m.find(file_.path()), std::string::npos) << m;
    EXPECT_NE(m.find("partition 1"), std::string::npos) << m;
    EXPECT_EQ(second.error().negative_errno(), -EBUSY);
  }
  EXPECT_TRUE((*first)->owns()) << "a refused claimer disturbed the owner";
  EXPECT_TRUE((*first)->append(as_bytes("still mine")).ok());
  // Other partitions are free.
  auto neighbour = PartitionWriter::claim(other_mapping, 2);
  EXPECT_TRUE(neighbour.ok()) << neighbour.error().message;
}

TEST_F(ClaimTest, NoSuchPartition) {
  auto w = PartitionWriter::claim(region_, kPartitions);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, Errc::no_such_partition) << w.error().message;
  EXPECT_FALSE(PartitionWriter::claim(nullptr, 0).ok());
}

TEST_F(ClaimTest, StaleRemoteClaimIsTakenOver) {
  const uint64_t now = wall_clock_ns();
  forge_owner(2, other_host(), 4242, now - 600 * kSecond);  // heartbeat stopped ten minutes ago

  // With a timeout longer than the silence, the owner still counts as alive.
  auto patient = PartitionWriter::claim(region_, 2, stale_after(std::chrono::hours(1)));
  ASSERT_FALSE(patient.ok()) << "claim taken although the owner's heartbeat is within stale_after";
  EXPECT_EQ(patient.error().code, Errc::claimed);
  EXPECT_NE(patient.error().message.find("pid 4242"), std::string::npos) << patient.error().message;
  EXPECT_NE(patient.error().message.find("another system"), std::string::npos) << patient.error().message;

  auto s = region_->stat(2);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->claimed);
  EXPECT_FALSE(s->alive) << "a ten-minute-old heartbeat counts as alive with the default policy";
  EXPECT_FALSE(s->owner_local);

  auto w = PartitionWriter::claim(region_, 2);  // default: stale after 5 s
  ASSERT_TRUE(w.ok()) << "a stale claim was not taken over: " << w.error().message;
  s = region_->stat(2);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->alive);
  EXPECT_TRUE(s->owner_local);
  EXPECT_EQ(s->owner_pid, static_cast<uint64_t>(::getpid()));
  EXPECT_TRUE((*w)->append(as_bytes("taken over")).ok());
}

TEST_F(ClaimTest, FreshRemoteClaimIsRefused) {
  forge_owner(3, other_host(), 4243, wall_clock_ns());
  auto w = PartitionWriter::claim(region_, 3, stale_after(std::chrono::hours(1)));
  ASSERT_FALSE(w.ok()) << "a fresh remote claim was taken";
  EXPECT_EQ(w.error().code, Errc::claimed);
  EXPECT_NE(w.error().message.find("pid 4243"), std::string::npos) << w.error().message;
  // A heartbeat from a clock ahead of ours counts as fresh, too.
  forge_owner(3, other_host(), 4244, wall_clock_ns() + 3600 * kSecond);
  w = PartitionWriter::claim(region_, 3, stale_after(std::chrono::milliseconds(1)));
  ASSERT_FALSE(w.ok()) << "a claim with a heartbeat from the future was taken";
  EXPECT_EQ(w.error().code, Errc::claimed);
}

// A remote owner that stops heartbeating is taken over once stale_after has
// passed (an "eventually" condition: no assertion on how soon).
TEST_F(ClaimTest, ClaimIsTakenOverAfterHeartbeatStops) {
  forge_owner(3, other_host(), 4245, wall_clock_ns());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  Result<std::unique_ptr<PartitionWriter>> w = make_error(Errc::claimed, "not tried");
  int refusals = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    w = PartitionWriter::claim(region_, 3, stale_after(std::chrono::milliseconds(300)));
    if (w.ok()) break;
    ASSERT_EQ(w.error().code, Errc::claimed) << w.error().message;
    ++refusals;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(w.ok()) << "claim never taken over: " << w.error().message;
  RecordProperty("refusals", refusals);
}

// An owner on this system whose process is gone is dead at once, however
// fresh its last heartbeat.
TEST_F(ClaimTest, VanishedLocalOwnerIsTakenOverAtOnce) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);  // reaped: the pid is free now
  forge_owner(0, local_host_id(), static_cast<uint64_t>(child), wall_clock_ns() + 60 * kSecond);
  auto s = region_->stat(0);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->claimed);
  EXPECT_TRUE(s->owner_local);
  EXPECT_FALSE(s->alive) << "an owner whose process is gone counts as alive";
  auto w = PartitionWriter::claim(region_, 0, stale_after(std::chrono::hours(1)));
  EXPECT_TRUE(w.ok()) << w.error().message;
}

// Invariant 6 (state survives in the region): a writer killed with SIGKILL
// after committing known data; the parent re-claims at once and sees it all.
TEST_F(ClaimTest, SigkilledWriterKeepsEveryCommittedByte) {
  std::string pattern(20000, '\0');
  std::mt19937 rng(99);
  for (char& c : pattern) c = static_cast<char>(rng());
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  Child child = spawn_child([&]() -> std::string {
    ::close(ready[0]);
    auto region = Region::open_path(file_.path(), RegionOpenOptions{true});
    if (!region.ok()) return region.error().message;
    auto w = PartitionWriter::claim(*region, 1);
    if (!w.ok()) return w.error().message;
    for (std::size_t done = 0; done < pattern.size(); done += 1000) {
      auto n = (*w)->append(as_bytes(pattern.substr(done, 1000)));
      if (!n.ok() || *n != 1000) return "append failed";
    }
    if (::write(ready[1], "r", 1) != 1) return "pipe";
    for (;;) ::pause();
  });
  ::close(ready[1]);
  ASSERT_GE(child.pid, 0);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1) << "child never got ready: " << drain(child.fd);
  ::close(ready[0]);
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  auto outcome = wait_child(child);
  ASSERT_TRUE(WIFSIGNALED(outcome.status)) << describe_status(outcome.status) << " " << outcome.output;

  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->claimed) << "the killed writer could not release its claim";
  EXPECT_FALSE(s->alive) << "a killed local owner counts as alive";
  EXPECT_EQ(s->owner_pid, static_cast<uint64_t>(child.pid));
  EXPECT_EQ(s->length, pattern.size());

  auto w = PartitionWriter::claim(region_, 1);  // at once: no waiting for the heartbeat to age
  ASSERT_TRUE(w.ok()) << "re-claim after SIGKILL refused: " << w.error().message;
  EXPECT_TRUE(read_all(*region_, 1) == pattern) << "committed bytes changed after SIGKILL and re-claim";
  auto n = (*w)->append(as_bytes("after"));
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_TRUE(read_all(*region_, 1) == pattern + "after");
}

// The same with the writer killed in the middle of a stream of appends: the
// committed length covers every append the writer saw succeed, ends on an
// append boundary, and every byte below it is intact.
TEST(ClaimCrash, SigkillMidStreamLosesNothingCommitted) {
  constexpr uint64_t kBig = 32ULL << 20;
  constexpr std::size_t kRecord = 512;
  TempFile file("claim-stream");
  format_file(file.path(), IVSHMFS_PAGE_SIZE + kBig, 1);
  auto record = [](uint64_t index) {
    std::string r(kRecord, '\0');
    std::memcpy(r.data(), &index, sizeof index);
    for (std::size_t k = sizeof index; k < kRecord; ++k) r[k] = static_cast<char>(index * 31 + k);
    return r;
  };
  int progress[2];
  ASSERT_EQ(::pipe(progress), 0);
  Child child = spawn_child([&]() -> std::string {
    ::close(progress[0]);
    auto region = Region::open_path(file.path(), RegionOpenOptions{true});
    if (!region.ok()) return region.error().message;
    auto w = PartitionWriter::claim(*region, 0);
    if (!w.ok()) return w.error().message;
    uint64_t total = 0;
    for (uint64_t i = 0;; ++i) {
      auto n = (*w)->append(as_bytes(record(i)));
      if (!n.ok()) break;  // full: wait to be killed
      total += *n;
      if (::write(progress[1], &total, sizeof total) != sizeof total) return "pipe";
    }
    for (;;) ::pause();
  });
  ::close(progress[1]);
  ASSERT_GE(child.pid, 0);
  uint64_t reported = 0;
  for (int i = 0; i < 2000; ++i) {
    ASSERT_EQ(::read(progress[0], &reported, sizeof reported), static_cast<ssize_t>(sizeof reported));
  }
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  auto outcome = wait_child(child);
  ASSERT_TRUE(WIFSIGNALED(outcome.status)) << describe_status(outcome.status) << " " << outcome.output;
  uint64_t value = 0;
  while (::read(progress[0], &value, sizeof value) == static_cast<ssize_t>(sizeof value)) reported = value;
  ::close(progress[0]);

  auto region = open_region(file.path(), true);
  ASSERT_NE(region, nullptr);
  auto w = PartitionWriter::claim(region, 0);
  ASSERT_TRUE(w.ok()) << "re-claim after SIGKILL refused: " << w.error().message;
  auto s = region->stat(0);
  ASSERT_TRUE(s.ok());
  std::printf("killed after %llu bytes reported; %llu committed\n", static_cast<unsigned long long>(reported),
              static_cast<unsigned long long>(s->length));
  EXPECT_GE(s->length, reported) << "an append the writer saw succeed was lost";
  EXPECT_LE(s->length, reported + kRecord) << "more committed than one unreported append";
  EXPECT_EQ(s->length % kRecord, 0u) << "a torn append was published";
  const std::string all = read_all(*region, 0);
  ASSERT_EQ(all.size(), s->length);
  for (uint64_t i = 0; i < all.size() / kRecord; ++i) {
    ASSERT_TRUE(all.compare(i * kRecord, kRecord, record(i)) == 0) << "record " << i << " is damaged";
  }
  auto n = (*w)->append(as_bytes(record(all.size() / kRecord)));
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(read_all(*region, 0).size(), s->length + kRecord);
}

TEST_F(ClaimTest, ForcedTakeoverStopsTheDisplacedWriter) {
  auto first = PartitionWriter::claim(region_, 2);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE((*first)->append(as_bytes("before ")).ok());
  auto other_mapping = open_region(file_.path(), true);
  ClaimOptions force;
  force.force = true;
  auto second = PartitionWriter::claim(other_mapping, 2, force);
  ASSERT_TRUE(second.ok()) << "forced claim failed: " << second.error().message;
  EXPECT_FALSE((*first)->owns());
  EXPECT_TRUE((*second)->owns());

  auto n = (*first)->append(as_bytes("displaced"));
  ASSERT_FALSE(n.ok()) << "the displaced writer appended";
  EXPECT_EQ(n.error().code, Errc::not_owner) << n.error().message;
  EXPECT_NE(n.error().message.find("partition 2"), std::string::npos) << n.error().message;
  auto r = (*first)->reset();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::not_owner);
  auto hb = (*first)->heartbeat();
  ASSERT_FALSE(hb.ok());
  EXPECT_EQ(hb.error().code, Errc::not_owner);

  first.value().reset();  // destroying the displaced writer must not release the new owner's claim
  auto s = region_->stat(2);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->claimed) << "the displaced writer released the new owner's claim";
  EXPECT_TRUE((*second)->owns());
  ASSERT_TRUE((*second)->append(as_bytes("after")).ok());
  EXPECT_EQ(read_all(*region_, 2), "before after") << "committed bytes survive a takeover";
}

TEST_F(ClaimTest, ReleaseOnDestruction) {
  {
    auto w = PartitionWriter::claim(region_, 1);
    ASSERT_TRUE(w.ok());
    auto s = region_->stat(1);
    ASSERT_TRUE(s.ok() && s->claimed);
  }
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->claimed) << "the partition stayed claimed after the writer was destroyed";
  EXPECT_FALSE(s->alive);
  auto again = PartitionWriter::claim(open_region(file_.path(), true), 1, stale_after(std::chrono::hours(1)));
  EXPECT_TRUE(again.ok()) << "re-claim after release: " << again.error().message;
}

TEST_F(ClaimTest, HeartbeatThreadKeepsTheClaimFresh) {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(10);
  auto w = PartitionWriter::claim(region_, 1, options);
  ASSERT_TRUE(w.ok());
  auto first = region_->stat(1);
  ASSERT_TRUE(first.ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  uint64_t beat = first->owner_heartbeat_ns;
  while (beat == first->owner_heartbeat_ns && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    auto s = region_->stat(1);
    ASSERT_TRUE(s.ok());
    beat = s->owner_heartbeat_ns;
  }
  EXPECT_GT(beat, first->owner_heartbeat_ns) << "the heartbeat never moved";
}

// A claim left by a writer that died in the middle of a reset (odd
// generation) is repaired by the next owner.
TEST_F(ClaimTest, ClaimFinishesAnInterruptedReset) {
  RawMap raw(file_.path());
  poke(raw.control(1)->head, 100);
  poke(raw.control(1)->generation, 7);
  auto w = PartitionWriter::claim(region_, 1);
  ASSERT_TRUE(w.ok()) << w.error().message;
  auto s = region_->stat(1);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->generation % 2, 0u);
  EXPECT_GT(s->generation, 7u);
  EXPECT_EQ(s->length, 0u);
}

TEST_F(ClaimTest, FormattedAnewUnderAnOpenWriter) {
  auto w = PartitionWriter::claim(region_, 1);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->append(as_bytes("old format")).ok());
  ASSERT_TRUE(region_->check_format().ok());
  {
    auto backend = Backend::open(file_.path(), BackendOptions{true, false, 0});
    ASSERT_TRUE(backend.ok());
    FormatOptions options;
    options.force = true;
    ASSERT_TRUE(Region::format(**backend, options).ok());
  }
  auto check = region_->check_format();
  ASSERT_FALSE(check.ok()) << "check_format missed a new format";
  EXPECT_EQ(check.error().code, Errc::reformatted);
  EXPECT_NE(check.error().message.find(file_.path()), std::string::npos) << check.error().message;
  EXPECT_NE(check.error().message.find("formatted anew"), std::string::npos) << check.error().message;
  auto n = (*w)->append(as_bytes("x"));
  ASSERT_FALSE(n.ok()) << "append into a region formatted anew succeeded";
  EXPECT_EQ(n.error().code, Errc::reformatted) << n.error().message;
  auto r = (*w)->reset();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::reformatted);
  // A fresh open sees the new, empty region.
  auto fresh = open_region(file_.path(), false);
  ASSERT_NE(fresh, nullptr);
  auto s = fresh->stat(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 0u);
  EXPECT_NE(fresh->info().format_id, region_->info().format_id);
}

}  // namespace
}  // namespace ivshmfs::test
