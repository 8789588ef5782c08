// SPDX-License-Identifier: MIT
// libFuzzer target: a live partition table (docs/layout.md, "Live partition
// table") that changes under an open reader. The input is a list of steps:
// a peer scribbles on the header's table words or an entry (with the seqlock
// even, odd or anything), an administrator adds or removes a partition, and
// the reader refreshes its table and reads, stats and views every partition
// it is given. Every refresh must either keep the old table with an error
// or give a table whose every row stays inside the mapping.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace {

constexpr std::size_t kRegionSize = 128 * 1024;

struct Scratch {
  int fd = -1;
  std::string path;
  std::vector<std::byte> formatted;  // 2 partitions in 6 slots, the rest free
};

Scratch& scratch() {
  static Scratch s = [] {
    Scratch made;
    made.fd = memfd_create("ivshmfs-fuzz-table", 0);
    if (made.fd < 0 || ftruncate(made.fd, kRegionSize) != 0) std::abort();
    made.path = "/proc/self/fd/" + std::to_string(made.fd);
    auto backend = ivshmfs::Backend::open(made.path, {true, false, 0});
    if (!backend) std::abort();
    ivshmfs::FormatOptions format;
    format.partitions = 2;
    format.slots = 6;
    format.layout = {{1, 8192, true}};
    if (!ivshmfs::Region::format(**backend, format)) std::abort();
    made.formatted.assign((*backend)->bytes().begin(), (*backend)->bytes().end());
    return made;
  }();
  return s;
}

void exercise(const ivshmfs::Region& region) {
  std::vector<std::byte> buffer(4096);
  for (const auto& p : region.partitions()) {
    (void)region.read(p.id, 0, buffer);
    (void)region.read(p.id, p.capacity - 1, buffer);
    if (auto v = region.view(p.id, 0, SIZE_MAX); v && !v->bytes.empty()) {
      volatile std::byte last = v->bytes.back();  // must be inside the mapping
      (void)last;
    }
    (void)region.stat(p.id);
  }
  (void)region.free_space();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  Scratch& s = scratch();
  if (pwrite(s.fd, s.formatted.data(), s.formatted.size(), 0) != static_cast<ssize_t>(s.formatted.size())) std::abort();
  auto reader = ivshmfs::Region::open_path(s.path, ivshmfs::RegionOpenOptions{});
  ivshmfs::RegionOpenOptions writable;
  writable.writable = true;
  auto admin = ivshmfs::Region::open_path(s.path, writable);
  if (!reader || !admin) std::abort();  // the formatted image is valid
  auto* bytes = reinterpret_cast<unsigned char*>((*admin)->backends().front()->bytes().data());
  // The header's table words and the entries of 6 slots: offsets 80..319.
  constexpr std::size_t kFirst = 80;
  constexpr std::size_t kSpan = 128 + 6 * 32 - kFirst;
  for (std::size_t i = 0; i + 10 <= size; i += 10) {
    const uint8_t op = data[i];
    const uint8_t arg = data[i + 1];
    uint64_t value = 0;
    std::memcpy(&value, data + i + 2, sizeof value);
    switch (op % 5) {
      case 0: {  // a peer scribbles 8 bytes, then bumps the seqlock to arg (even or odd)
        const std::size_t offset = kFirst + (arg * 8U) % kSpan;
        std::memcpy(bytes + offset, &value, std::min<std::size_t>(8, kFirst + kSpan - offset));
        uint64_t seq = 0;
        std::memcpy(&seq, bytes + 80, 8);
        seq += 1 + (arg & 1U);
        std::memcpy(bytes + 80, &seq, 8);
        break;
      }
      case 1:
        (void)(*admin)->add_partition(
            ivshmfs::NewPartition{(arg & 0x80U) != 0 ? std::optional<uint32_t>(arg % 70U) : std::nullopt,
                                  (value % 40U) * 4096U, (arg & 1U) != 0});
        break;
      case 2: (void)(*admin)->remove_partition(arg % 70U); break;
      case 3: {  // a peer that writes into a partition it finds
        if (auto writer = ivshmfs::PartitionWriter::claim(*admin, arg % 8U)) {
          const std::byte some[32]{};
          (void)(*writer)->append(some);
        }
        break;
      }
      default: break;
    }
    (void)(*reader)->refresh_table();
    exercise(**reader);
  }
  exercise(**admin);
  return 0;
}
