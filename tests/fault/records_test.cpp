// SPDX-License-Identifier: MIT
// The invariant checker of the stress tests must itself be able to fail:
// each way committed bytes can break the invariant, forged by hand.
#include <cstddef>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "records.hpp"

namespace ivshmfs::faulttest {
namespace {

struct Log {
  std::vector<std::byte> bytes;
  std::vector<Ack> acks;

  // Appends a record; acknowledges it unless told not to.
  void add(uint64_t generation, uint64_t seq, uint64_t incarnation, bool ack = true, std::size_t size = 100) {
    std::vector<std::byte> r(size);
    make_record(r, generation, seq, incarnation);
    bytes.insert(bytes.end(), r.begin(), r.end());
    RecordHeader h{};
    std::memcpy(&h, r.data(), kHeaderSize);
    if (ack) acks.push_back({generation, seq, incarnation, h.checksum});
  }
  std::string check(uint64_t generation) const { return check_partition(bytes, generation, acks); }
};

TEST(FaultRecords, ACleanHistoryPasses) {
  Log log;
  log.add(2, 1, 7);
  log.add(2, 2, 7, false);  // incarnation 7 was killed before acknowledging it
  log.add(2, 3, 8);
  log.add(2, 4, 8);
  log.acks.push_back({2, 0, 8, 0});   // a reset to generation 2
  log.acks.push_back({0, 5, 6, 42});  // a record of a generation a reset removed
  EXPECT_EQ(log.check(2), "");
}

TEST(FaultRecords, ALostAcknowledgedRecordFails) {
  Log log;
  log.add(0, 1, 1);
  log.acks.push_back({0, 2, 1, 1234});
  EXPECT_NE(log.check(0).find("missing"), std::string::npos) << log.check(0);
}

TEST(FaultRecords, AnOverwrittenAcknowledgedRecordFails) {
  Log log;
  log.add(0, 1, 1);
  log.add(0, 2, 2);
  log.acks.push_back({0, 2, 1, 99});  // incarnation 1 had acknowledged seq 2 too
  EXPECT_NE(log.check(0).find("overwritten"), std::string::npos) << log.check(0);
}

TEST(FaultRecords, AMixAcrossATakeoverFails) {
  Log log;
  log.add(0, 1, 1);
  log.add(0, 2, 2);
  log.add(0, 3, 1);
  EXPECT_NE(log.check(0).find("takeover"), std::string::npos) << log.check(0);
}

TEST(FaultRecords, AnUnacknowledgedRecordInTheMiddleFails) {
  Log log;
  log.add(0, 1, 1, false);
  log.add(0, 2, 1);
  EXPECT_NE(log.check(0).find("not that incarnation's last"), std::string::npos) << log.check(0);
}

TEST(FaultRecords, APartialRecordFails) {
  Log log;
  log.add(0, 1, 1);
  log.add(0, 2, 1, false, 200);
  log.bytes.resize(log.bytes.size() - 50);
  EXPECT_NE(log.check(0).find("partial"), std::string::npos) << log.check(0);
}

TEST(FaultRecords, AMixAcrossAResetFails) {
  Log log;
  log.add(2, 1, 1);
  log.add(4, 2, 1);
  EXPECT_NE(log.check(4).find("reset"), std::string::npos) << log.check(4);
}

TEST(FaultRecords, AGenerationGoingBackFails) {
  Log log;
  log.add(2, 1, 1);
  log.acks.push_back({4, 0, 1, 0});  // a reset to 4 was acknowledged
  EXPECT_NE(log.check(2).find("at generation 2"), std::string::npos) << log.check(2);
}

TEST(FaultRecords, AFlippedByteFails) {
  Log log;
  log.add(0, 1, 1);
  log.bytes[70] ^= std::byte{1};
  EXPECT_NE(log.check(0).find("checksum"), std::string::npos) << log.check(0);
}

TEST(FaultRecords, AGapInTheSequenceFails) {
  Log log;
  log.add(0, 1, 1);
  log.add(0, 3, 1);
  EXPECT_NE(log.check(0).find("was due"), std::string::npos) << log.check(0);
}

}  // namespace
}  // namespace ivshmfs::faulttest
