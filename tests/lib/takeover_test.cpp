// SPDX-License-Identifier: MIT
// Takeovers that cannot lose data. A writer process is stopped (SIGSTOP, by a
// fail point) at each step of an append and of a reset; the parent waits
// until its claim is stale, takes the partition over, appends, and resumes
// the stopped writer. The stopped writer's operation must fail with
// not_owner, the partition must hold exactly the acknowledged records of
// both writers in order, nothing of the interrupted write, and a reader
// process sampling it meanwhile must never see the length go backwards
// within a generation. Also: an owner proven dead needs no fence, a second
// fence is refused, and liveness across PID namespaces.
#include <sys/mman.h>

#include <cstdio>
#include <random>

#include "ivshmfs/failpoint.hpp"
#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPartitions = 2;
constexpr uint64_t kCapacity = 256 * 1024;
constexpr uint64_t kSize = IVSHMFS_PAGE_SIZE + kPartitions * kCapacity;
constexpr uint32_t kId = 1;
constexpr int kChildRecords = 20;
constexpr int kParentRecords = 7;
constexpr auto kStale = std::chrono::milliseconds(150);

// 100-byte records, distinct per writer and index.
std::string record(char who, int index) {
  std::string r = std::string(1, who) + " record " + std::to_string(index) + " ";
  r.resize(99, who);
  return r + "\n";
}
// The write a stopped owner was in the middle of: its bytes must never show.
const std::string& interrupted() {
  static const std::string bytes(3000, 'Z');
  return bytes;
}

std::string records(char who, int from, int to) {
  std::string all;
  for (int i = from; i < to; ++i) all += record(who, i);
  return all;
}

// Memory shared with the sampler process.
struct SamplerControl {
  std::atomic<int> stop{0};
  std::atomic<uint64_t> samples{0};
};

// Waits until the child stops itself (or reports why it exited instead).
::testing::AssertionResult wait_stopped(Child& child) {
  int status = 0;
  if (::waitpid(child.pid, &status, WUNTRACED) != child.pid) return ::testing::AssertionFailure() << "waitpid";
  if (WIFSTOPPED(status)) return ::testing::AssertionSuccess();
  const std::string output = drain(child.fd);
  ::close(child.fd);
  child.pid = -1;
  return ::testing::AssertionFailure() << "the owner never stopped: " << describe_status(status) << ": " << output;
}

class TakeoverTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    failpoint_clear();
    format_file(file_.path(), kSize, kPartitions);
    region_ = open_region(file_.path(), true);
    ASSERT_NE(region_, nullptr);
    void* shared = ::mmap(nullptr, sizeof(SamplerControl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(shared, MAP_FAILED);
    control_ = new (shared) SamplerControl;
  }
  void TearDown() override {
    if (control_ != nullptr) ::munmap(control_, sizeof(SamplerControl));
  }

  // A reader process: snapshots and whole reads of the partition until told
  // to stop. Within one generation the length never goes backwards, the
  // generation never goes backwards, and no byte of the interrupted write
  // ever shows.
  Child start_sampler() {
    return spawn_child([this]() -> std::string {
      auto region = Region::open_path(file_.path(), RegionOpenOptions{});
      if (!region.ok()) return "sampler: " + region.error().message;
      uint64_t last_generation = 0;
      uint64_t last_length = 0;
      std::vector<std::byte> buf(kCapacity);
      while (control_->stop.load() == 0) {
        auto s = (*region)->snapshot(kId);
        if (!s.ok()) {
          if (s.error().code == Errc::busy) continue;  // a reset stopped half way
          return "sampler: " + s.error().message;
        }
        if (s->generation < last_generation) {
          return "sampler: the generation went back from " + std::to_string(last_generation) + " to " +
                 std::to_string(s->generation);
        }
        if (s->generation == last_generation && s->length < last_length) {
          return "sampler: the length went back from " + std::to_string(last_length) + " to " +
                 std::to_string(s->length) + " in generation " + std::to_string(s->generation);
        }
        last_generation = s->generation;
        last_length = s->length;
        auto n = (*region)->read(kId, 0, buf);
        if (n.ok()) {
          for (std::size_t i = 0; i < *n; ++i) {
            if (buf[i] == std::byte{'Z'})
              return "sampler: a byte of the interrupted write showed at " + std::to_string(i);
          }
        } else if (n.error().code != Errc::busy) {
          return "sampler: " + n.error().message;
        }
        control_->samples.fetch_add(1);
      }
      return "";
    });
  }

  // start_owner, then waits until the owner said it is ready and stopped
  // itself; failures are recorded (check HasFailure()).
  Child start_stopped_owner(const std::string& point, bool reset, const std::string& first_point = "") {
    int ready[2];
    EXPECT_EQ(::pipe(ready), 0);
    Child owner = start_owner(point, reset, ready[1], first_point);
    ::close(ready[1]);
    char byte = 0;
    EXPECT_EQ(::read(ready[0], &byte, 1), 1) << "the owner never got ready: " << drain(owner.fd);
    ::close(ready[0]);
    EXPECT_TRUE(wait_stopped(owner));
    return owner;
  }

  // The owner: claims, appends kChildRecords acknowledged records, says so
  // on `ready`, then stops at `point` in the middle of an append of
  // interrupted() (or of a reset). Once resumed, that operation and every
  // later one must fail with not_owner.
  Child start_owner(const std::string& point, bool reset, int ready, const std::string& first_point = "") {
    return spawn_child([=, this]() -> std::string {
      auto region = Region::open_path(file_.path(), RegionOpenOptions{true});
      if (!region.ok()) return region.error().message;
      ClaimOptions options;
      options.heartbeat_interval = std::chrono::milliseconds(20);
      auto w = PartitionWriter::claim(*region, kId, options);
      if (!w.ok()) return "owner: " + w.error().message;
      for (int i = 0; i < kChildRecords; ++i) {
        auto n = (*w)->append(as_bytes(record('C', i)));
        if (!n.ok() || *n != 100) return "owner: append " + std::to_string(i) + " failed";
      }
      if (::write(ready, "r", 1) != 1) return "owner: pipe";
      if (auto armed = failpoint_set(point, "1*stop"); !armed) return armed.error().message;
      if (!first_point.empty()) {
        if (auto armed = failpoint_set(first_point, "1*stop"); !armed) return armed.error().message;
      }
      if (reset) {
        auto r = (*w)->reset();
        if (r.ok()) return "owner: the interrupted reset reported success after a takeover";
        if (r.error().code != Errc::not_owner) return "owner: the interrupted reset: " + r.error().message;
      } else {
        auto n = (*w)->append(as_bytes(interrupted()));
        if (n.ok()) return "owner: the interrupted append reported success (" + std::to_string(*n) + " bytes)";
        if (n.error().code != Errc::not_owner) return "owner: the interrupted append: " + n.error().message;
      }
      if (failpoint_hits(point) != 1) return "owner: fail point " + point + " was not hit";
      auto late = (*w)->append(as_bytes(interrupted()));
      if (late.ok() || late.error().code != Errc::not_owner) return "owner: an append after resuming was not refused";
      auto again = (*w)->reset();
      if (again.ok() || again.error().code != Errc::not_owner) return "owner: a reset after resuming was not refused";
      return "";
    });
  }

  // Claims the partition once the stopped owner's heartbeat is stale.
  std::unique_ptr<PartitionWriter> take_over(std::chrono::milliseconds heartbeat = std::chrono::milliseconds(0)) {
    ClaimOptions options;
    options.heartbeat_interval = heartbeat;
    options.liveness.stale_after = kStale;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      auto w = PartitionWriter::claim(region_, kId, options);
      if (w.ok()) return std::move(w).value();
      EXPECT_EQ(w.error().code, Errc::claimed) << w.error().message;
      if (w.error().code != Errc::claimed || std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "no takeover: " << w.error().message;
        return nullptr;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  void finish_sampler(Child sampler) {
    control_->stop.store(1);
    auto outcome = wait_child(sampler, std::chrono::seconds(60));
    EXPECT_CHILD_OK(outcome);
    EXPECT_GT(control_->samples.load(), 0u) << "the sampler never got a sample";
  }

  TempFile file_{"takeover"};
  std::shared_ptr<Region> region_;
  SamplerControl* control_ = nullptr;
};

// "writer.after-copy" -> "writer_after_copy", a test name.
std::string point_name(const ::testing::TestParamInfo<const char*>& point) {
  std::string name = point.param;
  for (char& c : name)
    if (c == '.' || c == '-') c = '_';
  return name;
}

class AppendTakeoverTest : public TakeoverTest {};

TEST_P(AppendTakeoverTest, StoppedAppendNeverPublishesAfterATakeover) {
  const std::string point = GetParam();
  Child sampler = start_sampler();
  Child owner = start_stopped_owner(point, false);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(read_all(*region_, kId), records('C', 0, kChildRecords)) << "before the takeover";

  auto taker = take_over();
  ASSERT_NE(taker, nullptr);
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  // The owner had announced its append: the takeover fenced it off.
  EXPECT_EQ(s->hole_length, interrupted().size()) << "the range the stopped owner announced was not fenced off";
  EXPECT_EQ(s->length, kChildRecords * 100u) << "the fence changed the file's length";
  for (int i = 0; i < kParentRecords - 2; ++i) {
    auto n = taker->append(as_bytes(record('P', i)));
    ASSERT_TRUE(n.ok()) << n.error().message;
  }
  ASSERT_EQ(::kill(owner.pid, SIGCONT), 0);
  auto outcome = wait_child(owner, std::chrono::seconds(60));
  EXPECT_CHILD_OK(outcome);
  for (int i = kParentRecords - 2; i < kParentRecords; ++i) {
    auto n = taker->append(as_bytes(record('P', i)));
    ASSERT_TRUE(n.ok()) << n.error().message;
  }
  finish_sampler(sampler);
  const std::string expected = records('C', 0, kChildRecords) + records('P', 0, kParentRecords);
  EXPECT_TRUE(read_all(*region_, kId) == expected)
      << "the partition does not hold exactly both writers' acknowledged records";
  // A fresh reader, and one through a view, agree.
  auto fresh = open_region(file_.path(), false);
  ASSERT_NE(fresh, nullptr);
  EXPECT_TRUE(read_all(*fresh, kId) == expected);
  std::string viewed;
  for (;;) {
    auto v = fresh->view(kId, viewed.size(), SIZE_MAX);
    ASSERT_TRUE(v.ok());
    if (v->bytes.empty()) break;
    viewed += as_string(v->bytes);
  }
  EXPECT_TRUE(viewed == expected) << "views do not see the same bytes as reads";
  // A reset clears the file but not the hole: the stopped owner's late copy
  // landed there, and a new generation must never show those bytes either.
  ASSERT_TRUE(taker->reset().ok());
  std::string refill;
  for (int i = 0; refill.size() + 100 <= kCapacity - interrupted().size(); ++i) {
    auto n = taker->append(as_bytes(record('R', i)));
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_EQ(*n, 100u);
    refill += record('R', i);
  }
  EXPECT_TRUE(read_all(*region_, kId) == refill) << "after a reset the data area's hole showed up";
}

INSTANTIATE_TEST_SUITE_P(EveryStopPoint, AppendTakeoverTest,
                         ::testing::Values("writer.after-announce", "writer.after-copy", "writer.before-publish"),
                         point_name);

class ResetTakeoverTest : public TakeoverTest {};

// An owner stopped in the middle of a reset: the taker finishes the reset
// (the truncation was asked for before the takeover), never undoes it, and
// the resumed owner can neither undo nor repeat it over the taker's records.
TEST_P(ResetTakeoverTest, StoppedResetIsFinishedByTheTaker) {
  const std::string point = GetParam();
  Child sampler = start_sampler();
  Child owner = start_stopped_owner(point, true);
  ASSERT_FALSE(HasFailure());
  auto before = region_->stat(kId);
  ASSERT_TRUE(before.ok()) << "stat fails on a half-done reset: " << before.error().message;
  EXPECT_TRUE(before->mid_reset);

  auto taker = take_over();
  ASSERT_NE(taker, nullptr);
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->mid_reset) << "the takeover left the reset half done";
  EXPECT_EQ(s->generation % 2, 0u);
  EXPECT_GT(s->generation, before->generation);
  EXPECT_EQ(s->length, 0u) << "the takeover did not finish the reset";
  EXPECT_EQ(s->hole_length, 0u) << "an idle owner's takeover made a hole";
  for (int i = 0; i < kParentRecords - 2; ++i) ASSERT_TRUE(taker->append(as_bytes(record('P', i))).ok());
  ASSERT_EQ(::kill(owner.pid, SIGCONT), 0);
  auto outcome = wait_child(owner, std::chrono::seconds(60));
  EXPECT_CHILD_OK(outcome);
  for (int i = kParentRecords - 2; i < kParentRecords; ++i) ASSERT_TRUE(taker->append(as_bytes(record('P', i))).ok());
  finish_sampler(sampler);
  EXPECT_TRUE(read_all(*region_, kId) == records('P', 0, kParentRecords))
      << "the partition does not hold exactly the taker's records";
  auto after = region_->stat(kId);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->generation, s->generation) << "the resumed owner changed the generation";
  ASSERT_TRUE(taker->reset().ok()) << "the taker's own reset";
  EXPECT_EQ(read_all(*region_, kId), "");
}

INSTANTIATE_TEST_SUITE_P(EveryStopPoint, ResetTakeoverTest, ::testing::Values("writer.reset-odd", "writer.mid-reset"),
                         point_name);

// An owner that had checked its claim for a reset and stopped before marking
// the generation odd: it resumes after the takeover, marks it odd, and stops
// again before it re-checks its claim. Readers must not wait for it: the new
// owner's heartbeat closes the mark; the resumed owner then changes nothing.
TEST_F(TakeoverTest, OddMarkMadeAfterATakeoverIsClosedByTheNewOwnersHeartbeat) {
  Child sampler = start_sampler();
  Child owner = start_stopped_owner("writer.reset-odd", true, "writer.reset-begin");
  ASSERT_FALSE(HasFailure());  // at writer.reset-begin
  auto taker = take_over(std::chrono::milliseconds(20));
  ASSERT_NE(taker, nullptr);
  ASSERT_TRUE(taker->append(as_bytes(record('P', 0))).ok());
  const uint64_t generation = region_->stat(kId)->generation;
  ASSERT_EQ(::kill(owner.pid, SIGCONT), 0);
  ASSERT_TRUE(wait_stopped(owner));  // at writer.reset-odd, its mark made
  // Readers get a stable snapshot again without the stopped owner's help.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  Result<PartitionSnapshot> snap = make_error(Errc::busy, "not tried");
  while (std::chrono::steady_clock::now() < deadline) {
    snap = region_->snapshot(kId);
    if (snap.ok() && snap->generation != generation) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(snap.ok()) << "readers still wait for the stopped owner: " << snap.error().message;
  EXPECT_GT(snap->generation, generation) << "the stopped owner never marked the generation odd";
  EXPECT_EQ(snap->length, kChildRecords * 100u + 100u) << "closing the mark changed the file";
  ASSERT_TRUE(taker->append(as_bytes(record('P', 1))).ok());
  ASSERT_EQ(::kill(owner.pid, SIGCONT), 0);
  auto outcome = wait_child(owner, std::chrono::seconds(60));
  EXPECT_CHILD_OK(outcome);
  ASSERT_TRUE(taker->append(as_bytes(record('P', 2))).ok());
  finish_sampler(sampler);
  EXPECT_TRUE(read_all(*region_, kId) == records('C', 0, kChildRecords) + records('P', 0, 3))
      << "a reset the displaced owner began after the takeover took effect";
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->mid_reset);
  EXPECT_EQ(s->generation % 2, 0u);
}

// An owner killed in the middle of a copy is proven dead (same boot, same
// PID namespace, process gone): taken over at once, without a fence.
TEST_F(TakeoverTest, OwnerKilledMidCopyIsTakenOverAtOnceWithoutAHole) {
  Child owner = start_stopped_owner("writer.after-copy", false);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(::kill(owner.pid, SIGKILL), 0);
  auto outcome = wait_child(owner, std::chrono::seconds(60));
  ASSERT_TRUE(WIFSIGNALED(outcome.status)) << describe_status(outcome.status);
  ClaimOptions patient;
  patient.liveness.stale_after = std::chrono::hours(1);
  patient.heartbeat_interval = std::chrono::milliseconds(0);
  auto w = PartitionWriter::claim(region_, kId, patient);
  ASSERT_TRUE(w.ok()) << "a dead owner was not taken over at once: " << w.error().message;
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->hole_length, 0u) << "a dead owner's takeover made a hole";
  ASSERT_TRUE((*w)->append(as_bytes(record('P', 0))).ok());
  EXPECT_TRUE(read_all(*region_, kId) == records('C', 0, kChildRecords) + records('P', 0, 1));
}

// A reservation (the daemon's zero-copy write path) left open across a
// forced takeover from a live owner: the taker fences the reserved range,
// the displaced owner's commit publishes nothing, and its bytes never show.
TEST_F(TakeoverTest, ForcedTakeoverFencesAnOpenReservation) {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);
  auto owner = PartitionWriter::claim(region_, kId, options);
  ASSERT_TRUE(owner.ok()) << owner.error().message;
  ASSERT_TRUE((*owner)->append(as_bytes("before ")).ok());
  auto room = (*owner)->reserve(4096);
  ASSERT_TRUE(room.ok()) << room.error().message;
  ASSERT_EQ(room->bytes().size(), 4096u);

  auto other_mapping = open_region(file_.path(), true);
  ClaimOptions force = options;
  force.force = true;
  auto taker = PartitionWriter::claim(other_mapping, kId, force);
  ASSERT_TRUE(taker.ok()) << taker.error().message;
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->hole_length, 4096u) << "the open reservation was not fenced off";
  ASSERT_TRUE((*taker)->append(as_bytes("after")).ok());

  std::memset(room->bytes().data(), 'Z', room->bytes().size());  // the displaced owner keeps copying
  EXPECT_EQ(room->commit(4096), 0u) << "a fenced reservation was published";
  EXPECT_EQ(read_all(*region_, kId), "before after");
  s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 12u);
  EXPECT_EQ(s->free, kCapacity - 12 - 4096) << "free space does not account for the hole";
}

// Makes the partition look owned by a live process of ours that stopped
// heartbeating with an announced, unpublished range: a takeover must fence.
void forge_stopped_owner(const std::string& path, uint64_t announce) {
  RawMap raw(path);
  ivshmfs_control* c = raw.control(kId);
  const ProcessIdentity self = local_process_identity();
  static std::mt19937_64 rng(std::random_device{}());
  poke(c->owner_token, rng() | 1);
  poke(c->owner_pid, self.pid);
  poke(c->owner_host, local_host_id());
  poke(c->owner_pid_ns, self.pid_ns);
  poke(c->owner_start_time, self.start_time);
  poke(c->owner_heartbeat_ns, wall_clock_ns() - 3600ULL * 1'000'000'000ULL);
  poke(c->reserve_end, (peek(c->head) & ~IVSHMFS_HEAD_FENCE) + announce);
}

// A taker that dies in the middle of its fence (head frozen, hole not yet
// recorded): readers keep seeing the same file, and the next claimer
// finishes the fence before it writes.
TEST_F(TakeoverTest, FenceLeftHalfDoneIsFinishedByTheNextClaimer) {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);
  {
    auto first = PartitionWriter::claim(region_, kId, options);
    ASSERT_TRUE(first.ok()) << first.error().message;
    ASSERT_TRUE((*first)->append(as_bytes("abc")).ok());
    (*first)->release();
  }
  forge_stopped_owner(file_.path(), 100);
  auto outcome = run_in_child([this]() -> std::string {
    if (auto armed = failpoint_set("claim.mid-fence", "exit(0)"); !armed) return armed.error().message;
    auto region = Region::open_path(file_.path(), RegionOpenOptions{true});
    if (!region.ok()) return region.error().message;
    ClaimOptions quiet;
    quiet.heartbeat_interval = std::chrono::milliseconds(0);
    auto w = PartitionWriter::claim(*region, kId, quiet);
    return "the taker got past its fence point: " + (w.ok() ? std::string("claimed") : w.error().message);
  });
  ASSERT_TRUE(outcome.ok()) << describe_status(outcome.status) << ": " << outcome.output;
  {
    RawMap raw(file_.path());
    EXPECT_NE(peek(raw.control(kId)->head) & IVSHMFS_HEAD_FENCE, 0u) << "the taker did not die mid-fence";
  }
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 3u) << "a frozen head changed the file's length";
  EXPECT_EQ(read_all(*region_, kId), "abc");

  // The dead taker is proven dead: no fence of its own is needed, but the
  // one it began must be finished.
  auto next = PartitionWriter::claim(region_, kId, options);
  ASSERT_TRUE(next.ok()) << next.error().message;
  s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->head & IVSHMFS_HEAD_FENCE, 0u) << "the fence bit stayed";
  EXPECT_EQ(s->hole_offset, 3u);
  EXPECT_EQ(s->hole_length, 100u) << "the announced range was not fenced off";
  ASSERT_TRUE((*next)->append(as_bytes("def")).ok());
  EXPECT_EQ(read_all(*region_, kId), "abcdef");
}

TEST_F(TakeoverTest, SecondFenceIsRefusedAndTheOwnerKeepsThePartition) {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);
  {
    auto first = PartitionWriter::claim(region_, kId, options);
    ASSERT_TRUE(first.ok()) << first.error().message;
    ASSERT_TRUE((*first)->append(as_bytes("abc")).ok());
    (*first)->release();
  }
  forge_stopped_owner(file_.path(), 100);
  auto second = PartitionWriter::claim(region_, kId, options);
  ASSERT_TRUE(second.ok()) << "a stale owner was not taken over: " << second.error().message;
  auto s = region_->stat(kId);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->hole_offset, 3u);
  EXPECT_EQ(s->hole_length, 100u);
  ASSERT_TRUE((*second)->append(as_bytes("def")).ok());
  EXPECT_EQ(read_all(*region_, kId), "abcdef");
  (*second)->release();

  forge_stopped_owner(file_.path(), 50);
  const uint64_t forged_token = peek(RawMap(file_.path()).control(kId)->owner_token);
  auto third = PartitionWriter::claim(region_, kId, options);
  ASSERT_FALSE(third.ok()) << "a second fence was made";
  EXPECT_EQ(third.error().code, Errc::claimed);
  EXPECT_NE(third.error().message.find("fenced off"), std::string::npos) << third.error().message;
  EXPECT_NE(third.error().message.find("ivshmctl format --force"), std::string::npos) << third.error().message;
  EXPECT_EQ(peek(RawMap(file_.path()).control(kId)->owner_token), forged_token)
      << "a refused claim took the token anyway";
  EXPECT_EQ(read_all(*region_, kId), "abcdef") << "a refused claim changed what readers see";
}

// An owner in another PID namespace, or with another start time than the
// process now holding its pid: judged by facts that hold across namespaces.
TEST_F(TakeoverTest, LivenessUsesNamespaceAndStartTime) {
  const ProcessIdentity self = local_process_identity();
  if (self.pid_ns == 0) GTEST_SKIP() << "skipped: /proc does not tell this process's PID namespace";
  ASSERT_NE(self.start_time, 0u);
  auto forge = [&](uint64_t pid, uint64_t pid_ns, uint64_t start_time) {
    RawMap raw(file_.path());
    ivshmfs_control* c = raw.control(kId);
    poke(c->owner_token, 0x5eed);
    poke(c->owner_pid, pid);
    poke(c->owner_host, local_host_id());
    poke(c->owner_pid_ns, pid_ns);
    poke(c->owner_start_time, start_time);
    poke(c->owner_heartbeat_ns, wall_clock_ns());
  };
  const pid_t gone = ::fork();
  ASSERT_GE(gone, 0);
  if (gone == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(gone, nullptr, 0), gone);

  struct Case {
    const char* what;
    uint64_t pid, pid_ns, start_time;
    bool dead;
  };
  const Case cases[] = {
      {"this very process", self.pid, self.pid_ns, self.start_time, false},
      {"our pid with another start time (pid reused)", self.pid, self.pid_ns, self.start_time + 1, true},
      {"our pid, start time unknown", self.pid, self.pid_ns, 0, false},
      {"a reaped process in our namespace", static_cast<uint64_t>(gone), self.pid_ns, 0, true},
      {"a reaped pid in another namespace", static_cast<uint64_t>(gone), self.pid_ns + 1, 0, false},
      {"a reaped pid, namespace unknown", static_cast<uint64_t>(gone), 0, 0, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    forge(c.pid, c.pid_ns, c.start_time);
    auto s = region_->stat(kId, LivenessPolicy{std::chrono::hours(1)});
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->owner_dead, c.dead);
    EXPECT_EQ(s->alive, !c.dead) << "a fresh heartbeat and an owner not proven dead must count as alive";
  }
}

// Runs a shell command, returns its exit status and output (stdout+stderr).
int run_shell(const std::string& command, std::string* output) {
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) *output += buf;
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Issue: a daemon in another PID namespace on the same host (containers
// share the boot id) stole a live claim, because kill(pid, 0) in its own
// namespace found no such process.
TEST_F(TakeoverTest, ClaimerInAnotherPidNamespaceIsRefused) {
  std::string probe;
  if (run_shell("unshare --pid --fork true", &probe) != 0) {
    GTEST_SKIP() << "skipped: 'unshare --pid --fork' does not work here (util-linux, privileges): " << probe;
  }
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(100);
  auto owner = PartitionWriter::claim(region_, kId, options);
  ASSERT_TRUE(owner.ok()) << owner.error().message;
  ASSERT_TRUE((*owner)->append(as_bytes("mine ")).ok());
  for (const char* flags : {"--pid --fork", "--pid --fork --mount-proc"}) {
    SCOPED_TRACE(flags);
    std::string output;
    const int status = run_shell(std::string("printf stolen | unshare ") + flags + " " + IVSHMCTL_PATH + " write " +
                                     file_.path() + " " + std::to_string(kId),
                                 &output);
    EXPECT_EQ(status, 1) << "a claimer in another PID namespace was not refused: " << output;
    EXPECT_NE(output.find("owned by a live writer"), std::string::npos) << output;
    EXPECT_TRUE((*owner)->owns()) << "the live owner lost its claim";
  }
  ASSERT_TRUE((*owner)->append(as_bytes("still mine")).ok());
  EXPECT_EQ(read_all(*region_, kId), "mine still mine");
}

TEST(FailPoint, SpecsAreParsedAndCounted) {
  failpoint_clear();
  EXPECT_TRUE(failpoint_set("writer.after-copy", "sleep(1)").ok());
  EXPECT_TRUE(failpoint_set_all("writer.after-announce=2*sleep(0); writer.before-publish=off").ok());
  auto bad_point = failpoint_set("writer.no-such-point", "stop");
  ASSERT_FALSE(bad_point.ok());
  EXPECT_NE(bad_point.error().message.find("writer.after-copy"), std::string::npos) << "the known points are listed";
  EXPECT_FALSE(failpoint_set("writer.after-copy", "explode").ok());
  EXPECT_FALSE(failpoint_set("writer.after-copy", "0*stop").ok());
  EXPECT_FALSE(failpoint_set_all("writer.after-copy").ok());

  TempFile file("failpoint");
  format_file(file.path(), kSize, kPartitions);
  auto region = open_region(file.path(), true);
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);
  auto w = PartitionWriter::claim(region, 0, options);
  ASSERT_TRUE(w.ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*w)->append(as_bytes("x")).ok());
  EXPECT_EQ(failpoint_hits("writer.after-copy"), 3u);
  EXPECT_EQ(failpoint_hits("writer.after-announce"), 2u) << "a counted action fires that many times";
  EXPECT_EQ(failpoint_hits("writer.before-publish"), 0u);
  failpoint_clear();
  ASSERT_TRUE((*w)->append(as_bytes("x")).ok());
  EXPECT_EQ(failpoint_hits("writer.after-copy"), 3u) << "a cleared point still fires";
}

}  // namespace
}  // namespace ivshmfs::test
