// SPDX-License-Identifier: MIT
// Futex wake-ups between processes on one host (ivshmfs/wake.hpp): a peer
// that announced it waits for a partition and sleeps on its futex words is
// woken by the owner's commit or reset, through a read-only mapping too; an
// owner nobody waits for sends no wake; a word that moved before the wait
// ends it at once. No timing is asserted beyond generous deadlines.
#include <unistd.h>

#include <array>
#include <thread>
#include <vector>

#include "ivshmfs/wake.hpp"
#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

constexpr uint32_t kPartitions = 3;
constexpr uint64_t kPieceSize = 64 * 1024;
constexpr uint32_t kOwner = 1;   // writes
constexpr uint32_t kWaiter = 2;  // announces that it waits for kOwner
// Far longer than any wake-up takes, far shorter than the test's timeout:
// a waiter still asleep then was not woken.
constexpr auto kGenerous = std::chrono::seconds(20);

ClaimOptions quiet_claim() {
  ClaimOptions options;
  options.heartbeat_interval = std::chrono::milliseconds(0);
  return options;
}

class WakeTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    if (!futex_waitv_available()) GTEST_SKIP() << "skipped: this kernel has no futex_waitv (Linux 5.16 or later)";
    region_ = open_region(file_.path(), true);
    ASSERT_NE(region_, nullptr);
    auto writer = PartitionWriter::claim(region_, kOwner, quiet_claim());
    ASSERT_TRUE(writer.ok()) << writer.error().message;
    writer_ = std::move(writer).value();
  }

  // A child process that maps the region itself (read-only or not), loads
  // the owner's futex words, says so on `ready`, and sleeps on them. It
  // succeeds when the wait ends by a wake or a changed word and the head or
  // generation moved; it fails when the generous deadline passes.
  Child spawn_waiter(bool writable, int ready) {
    const std::string path = file_.path();
    return spawn_child([path, writable, ready]() -> std::string {
      RegionOpenOptions options;
      options.writable = writable;
      auto region = Region::open_path(path, options);
      if (!region) return "open: " + region.error().message;
      const PartitionInfo* p = (*region)->find(kOwner);
      if (p == nullptr) return "no partition " + std::to_string(kOwner);
      const PartitionWakeWords before = wake_words(**region, *p);
      const std::array<FutexWord, 2> words{before.head, before.generation};
      if (::write(ready, "r", 1) != 1) return "ready pipe";
      const auto deadline = std::chrono::steady_clock::now() + kGenerous;
      for (;;) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= std::chrono::nanoseconds(0)) return "not woken within " + std::to_string(kGenerous.count()) + " s";
        auto outcome = wait_any(words, left);
        if (!outcome) return "wait: " + outcome.error().message;
        if (*outcome == WaitOutcome::timed_out) {
          return "not woken within " + std::to_string(kGenerous.count()) + " s";
        }
        const PartitionWakeWords now = wake_words(**region, *p);
        const bool moved = now.head.value != before.head.value || now.generation.value != before.generation.value;
        if (moved) return "";
        // A spurious wake-up or a timeout: nothing moved yet, wait on.
      }
    });
  }

  static void wait_ready(int fd) {
    char c = 0;
    ASSERT_EQ(::read(fd, &c, 1), 1) << "the waiter never got ready";
  }

  TestRegion file_{"wake", GetParam(), kPartitions, kPieceSize};
  std::shared_ptr<Region> region_;
  std::unique_ptr<PartitionWriter> writer_;
};

TEST_P(WakeTest, OnlyAnAnnouncedWaiterGetsAWake) {
  const PartitionInfo& own = *region_->find(kOwner);
  EXPECT_FALSE(wake_peers(*region_, own)) << "nobody announced waiting, yet a wake was sent";
  ASSERT_TRUE(region_->announce_waiting(kWaiter, uint64_t{1} << 0).ok());
  EXPECT_FALSE(wake_peers(*region_, own)) << "the waiter waits for partition 0, not for the owner's";
  ASSERT_TRUE(region_->announce_waiting(kWaiter, uint64_t{1} << kOwner).ok());
  EXPECT_TRUE(wake_peers(*region_, own)) << "the waiter announced it waits for the owner's partition";
  // The owner's own word does not count: it wakes its own readers itself.
  ASSERT_TRUE(region_->announce_waiting(kWaiter, 0).ok());
  ASSERT_TRUE(region_->announce_waiting(kOwner, uint64_t{1} << kOwner).ok());
  EXPECT_FALSE(wake_peers(*region_, own)) << "the owner's own announcement made it wake peers";
}

TEST_P(WakeTest, ACommitWakesAWaiterInAnotherProcess) {
  ASSERT_TRUE(region_->announce_waiting(kWaiter, uint64_t{1} << kOwner).ok());
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  Child waiter = spawn_waiter(true, ready[1]);
  ::close(ready[1]);
  wait_ready(ready[0]);
  ::close(ready[0]);
  // Usually lets the waiter fall asleep first; correct either way (a commit
  // before the wait changes the head word, which ends the wait at once).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto n = writer_->append(as_bytes("one small message"));
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_CHILD_OK(wait_child(waiter));
}

TEST_P(WakeTest, AResetWakesAWaiterThroughAReadOnlyMapping) {
  ASSERT_TRUE(writer_->append(as_bytes("before the reset")).ok());
  ASSERT_TRUE(region_->announce_waiting(kWaiter, uint64_t{1} << kOwner).ok());
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  Child waiter = spawn_waiter(false, ready[1]);
  ::close(ready[1]);
  wait_ready(ready[0]);
  ::close(ready[0]);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto r = writer_->reset();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_CHILD_OK(wait_child(waiter));
}

TEST_P(WakeTest, AWordThatMovedBeforeTheWaitEndsItAtOnce) {
  const PartitionInfo& own = *region_->find(kOwner);
  const PartitionWakeWords before = wake_words(*region_, own);
  ASSERT_TRUE(writer_->append(as_bytes("x")).ok());
  const std::array<FutexWord, 2> words{before.head, before.generation};
  auto outcome = wait_any(words, kGenerous);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(*outcome, WaitOutcome::changed) << "the head moved before the wait, yet it slept";
}

TEST(WakeWait, RefusesNoWordsAndTooManyWords) {
  if (!futex_waitv_available()) GTEST_SKIP() << "skipped: this kernel has no futex_waitv (Linux 5.16 or later)";
  uint32_t word = 0;
  EXPECT_EQ(wait_any({}, std::chrono::milliseconds(1)).error().code, Errc::invalid_argument);
  std::vector<FutexWord> many(kMaxFutexWords + 1, FutexWord{&word, 0, false});
  EXPECT_EQ(wait_any(many, std::chrono::milliseconds(1)).error().code, Errc::invalid_argument);
  // A private word nobody wakes: the timeout ends the wait (or a spurious
  // wake-up does; never an error).
  const std::array<FutexWord, 1> one{FutexWord{&word, 0, false}};
  auto outcome = wait_any(one, std::chrono::milliseconds(5));
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_NE(*outcome, WaitOutcome::changed);
}

IVSHMFS_BOTH_MODES(WakeTest);

}  // namespace
}  // namespace ivshmfs::test
