// SPDX-License-Identifier: MIT
// Self-checking records for the fault-injection stress tests, the owners'
// acknowledgements, and the invariant every run ends with.
//
// A record is a 48-byte header and a payload that follows from the header
// alone, so a reader can check every record it sees without knowing who
// wrote it:
//
//   magic u32 | length u32 (whole record) | generation u64 | seq u64 |
//   incarnation u64 | checksum u64 (FNV-1a of the record with this field 0) |
//   reserved u64 | payload (length - 48 bytes)
//
// `generation` is the partition's generation when the record was written,
// `seq` counts the records of that generation from 1, and `incarnation`
// names the owner process that wrote it (a new one after every restart or
// takeover). After an append returns, the owner writes an acknowledgement
// (one Ack, 32 bytes, one write(2)) to a side file of its own.
//
// The invariant (check_partition): the committed bytes of a partition are
//   - whole records only, every checksum right, all of the partition's
//     current generation, seq 1, 2, 3, ... without a gap;
//   - every acknowledged record of the current generation, at its seq, with
//     the incarnation and checksum that acknowledged it (nothing acknowledged
//     was lost, moved or overwritten);
//   - no acknowledgement of a generation newer than the current one (the
//     length or generation never went back);
//   - each incarnation's records in one run (i, j, i is a mix across a
//     takeover);
//   - at most one unacknowledged record per incarnation, and only as its
//     last record: the one it had published when it was killed or stopped
//     before it could write the acknowledgement. An owner acknowledges a
//     record before it starts the next append, so an unacknowledged record
//     followed by another of the same incarnation cannot happen.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ivshmfs::faulttest {

inline constexpr uint32_t kRecordMagic = 0x43525649;  // "IVRC"
inline constexpr std::size_t kHeaderSize = 48;
inline constexpr std::size_t kMaxRecord = 64 * 1024;
// Through a mount: one page, so one write(2) is one FUSE request.
inline constexpr std::size_t kMaxMountRecord = 4096;

struct RecordHeader {
  uint32_t magic;
  uint32_t length;
  uint64_t generation;
  uint64_t seq;
  uint64_t incarnation;
  uint64_t checksum;
  uint64_t reserved;
};
static_assert(sizeof(RecordHeader) == kHeaderSize);

// seq 0 acknowledges a reset to `generation`.
struct Ack {
  uint64_t generation;
  uint64_t seq;
  uint64_t incarnation;
  uint64_t checksum;
};
static_assert(sizeof(Ack) == 32);

inline uint64_t fnv1a(uint64_t hash, const std::byte* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) hash = (hash ^ static_cast<uint8_t>(p[i])) * 1099511628211ULL;
  return hash;
}

inline uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t record_checksum(std::span<const std::byte> record) {
  RecordHeader h{};
  std::memcpy(&h, record.data(), kHeaderSize);
  h.checksum = 0;
  uint64_t hash = fnv1a(1469598103934665603ULL, reinterpret_cast<const std::byte*>(&h), kHeaderSize);
  return fnv1a(hash, record.data() + kHeaderSize, record.size() - kHeaderSize);
}

// Fills `out` (kHeaderSize <= out.size() <= kMaxRecord) with one record.
inline void make_record(std::span<std::byte> out, uint64_t generation, uint64_t seq, uint64_t incarnation) {
  RecordHeader h{kRecordMagic, static_cast<uint32_t>(out.size()), generation, seq, incarnation, 0, 0};
  std::memcpy(out.data(), &h, kHeaderSize);
  uint64_t state = generation * 31 + seq * 1000003 + incarnation;
  for (std::size_t i = kHeaderSize; i < out.size(); ++i) out[i] = static_cast<std::byte>(splitmix(state));
  h.checksum = record_checksum(out);
  std::memcpy(out.data(), &h, kHeaderSize);
}

struct ParsedRecord {
  uint64_t offset;
  uint64_t generation;
  uint64_t seq;
  uint64_t incarnation;
  uint64_t checksum;
};

// Parses committed bytes that must be whole records of `generation`, seq
// from 1 without a gap. Returns the records, or sets `error`.
inline std::vector<ParsedRecord> parse_records(std::span<const std::byte> bytes, uint64_t generation,
                                               std::string& error) {
  std::vector<ParsedRecord> out;
  std::size_t offset = 0;
  while (offset < bytes.size()) {
    const std::string at = "at offset " + std::to_string(offset) + " (committed " + std::to_string(bytes.size()) + ")";
    if (bytes.size() - offset < kHeaderSize) {
      error = "a partial record header " + at;
      return out;
    }
    RecordHeader h{};
    std::memcpy(&h, bytes.data() + offset, kHeaderSize);
    if (h.magic != kRecordMagic) {
      error = "no record magic " + at;
      return out;
    }
    if (h.length < kHeaderSize || h.length > kMaxRecord) {
      error = "record length " + std::to_string(h.length) + " out of range " + at;
      return out;
    }
    if (h.length > bytes.size() - offset) {
      error = "a partial record (length " + std::to_string(h.length) + ") " + at;
      return out;
    }
    const auto record = bytes.subspan(offset, h.length);
    if (record_checksum(record) != h.checksum) {
      error = "checksum mismatch (seq " + std::to_string(h.seq) + ", incarnation " + std::to_string(h.incarnation) +
              ") " + at;
      return out;
    }
    if (h.generation != generation) {
      error = "record of generation " + std::to_string(h.generation) + " in generation " + std::to_string(generation) +
              " " + at + ": a mix across a reset";
      return out;
    }
    if (h.seq != out.size() + 1) {
      error = "seq " + std::to_string(h.seq) + " where " + std::to_string(out.size() + 1) + " was due " + at;
      return out;
    }
    out.push_back({offset, h.generation, h.seq, h.incarnation, h.checksum});
    offset += h.length;
  }
  return out;
}

// Every whole Ack in the side file at `path`.
inline std::vector<Ack> read_acks(const std::string& path) {
  std::vector<Ack> acks;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return acks;
  Ack a{};
  while (::read(fd, &a, sizeof a) == static_cast<ssize_t>(sizeof a)) acks.push_back(a);
  ::close(fd);
  return acks;
}

inline bool write_ack(int fd, const Ack& a) { return ::write(fd, &a, sizeof a) == static_cast<ssize_t>(sizeof a); }

// The invariant above, for one partition; returns what broke it, or "".
inline std::string check_partition(std::span<const std::byte> committed, uint64_t generation,
                                   const std::vector<Ack>& acks) {
  std::string error;
  const auto records = parse_records(committed, generation, error);
  if (!error.empty()) return "committed bytes: " + error;
  std::map<uint64_t, std::map<uint64_t, uint64_t>> acked;  // incarnation -> seq -> checksum
  for (const Ack& a : acks) {
    if (a.generation > generation) {
      return "incarnation " + std::to_string(a.incarnation) + " acknowledged " +
             (a.seq == 0 ? std::string("a reset") : "seq " + std::to_string(a.seq)) + " of generation " +
             std::to_string(a.generation) + " but the partition is at generation " + std::to_string(generation);
    }
    if (a.seq == 0 || a.generation != generation) continue;  // resets, and records a later reset removed
    if (a.seq > records.size()) {
      return "acknowledged seq " + std::to_string(a.seq) + " (incarnation " + std::to_string(a.incarnation) +
             ") is missing: only " + std::to_string(records.size()) + " records are committed";
    }
    const ParsedRecord& r = records[a.seq - 1];
    if (r.incarnation != a.incarnation || r.checksum != a.checksum) {
      return "acknowledged seq " + std::to_string(a.seq) + " of incarnation " + std::to_string(a.incarnation) +
             " was overwritten by incarnation " + std::to_string(r.incarnation) + " at offset " +
             std::to_string(r.offset);
    }
    acked[a.incarnation][a.seq] = a.checksum;
  }
  std::map<uint64_t, std::size_t> last_of;  // incarnation -> index of its last record
  for (std::size_t i = 0; i < records.size(); ++i) last_of[records[i].incarnation] = i;
  std::map<uint64_t, bool> finished;  // incarnation -> a later incarnation's record followed
  uint64_t current = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const ParsedRecord& r = records[i];
    if (r.incarnation != current) {
      if (finished[r.incarnation]) {
        return "incarnation " + std::to_string(r.incarnation) + " wrote seq " + std::to_string(r.seq) +
               " after incarnation " + std::to_string(current) + " had taken over: a mix across a takeover";
      }
      if (current != 0) finished[current] = true;
      current = r.incarnation;
    }
    const bool is_acked = acked[r.incarnation].count(r.seq) != 0;
    if (!is_acked && last_of[r.incarnation] != i) {
      return "seq " + std::to_string(r.seq) + " of incarnation " + std::to_string(r.incarnation) +
             " is committed and unacknowledged but not that incarnation's last record";
    }
  }
  return "";
}

}  // namespace ivshmfs::faulttest
