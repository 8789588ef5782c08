// SPDX-License-Identifier: MIT
// libFuzzer target: a region whose metadata any peer may have scribbled on.
// Region::open must either refuse it with an error or give a region whose
// every read, view, stat, claim and append stays inside the mapping.
//
// The input is used two ways (first byte): raw bytes over the metadata, or a
// list of (offset, value) patches applied to a freshly formatted region, so
// the fuzzer reaches the checks behind the first ones quickly.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace {

constexpr std::size_t kRegionSize = 64 * 1024;

struct Scratch {
  int fd = -1;
  std::string path;
  std::vector<std::byte> formatted;  // a valid 4-partition image
};

Scratch& scratch() {
  static Scratch s = [] {
    Scratch made;
    made.fd = memfd_create("ivshmfs-fuzz", 0);
    if (made.fd < 0 || ftruncate(made.fd, kRegionSize) != 0) std::abort();
    made.path = "/proc/self/fd/" + std::to_string(made.fd);
    auto backend = ivshmfs::Backend::open(made.path, {true, false, 0});
    if (!backend) std::abort();
    ivshmfs::FormatOptions format;
    format.partitions = 4;
    format.layout = {{1, 0, true}, {2, 8192, false}};  // a ring and a sized partition: their bits are fuzzed too
    if (!ivshmfs::Region::format(**backend, format)) std::abort();
    made.formatted.assign((*backend)->bytes().begin(), (*backend)->bytes().end());
    return made;
  }();
  return s;
}

void exercise(const ivshmfs::Region& region, const std::shared_ptr<ivshmfs::Region>& shared) {
  std::vector<std::byte> buffer(8192);
  for (const auto& p : region.partitions()) {
    (void)region.read(p.id, 0, buffer);
    (void)region.read(p.id, p.capacity - 1, buffer);
    if (auto v = region.view(p.id, 0, SIZE_MAX); v && !v->bytes.empty()) {
      volatile std::byte last = v->bytes.back();  // must be inside the mapping
      (void)last;
    }
    (void)region.stat(p.id);
  }
  if (!region.partitions().empty()) {
    ivshmfs::ClaimOptions claim;
    claim.heartbeat_interval = std::chrono::milliseconds(0);
    claim.liveness.stale_after = std::chrono::milliseconds(0);
    if (auto writer = ivshmfs::PartitionWriter::claim(shared, region.partitions().front().id, claim)) {
      const std::byte bytes[64]{};
      (void)(*writer)->append(bytes);
      (void)(*writer)->reset();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  Scratch& s = scratch();
  std::vector<std::byte> image = s.formatted;
  if (size > 0 && (data[0] & 1) == 0) {
    std::memcpy(image.data(), data + 1, std::min(size - 1, image.size()));
  } else if (size > 0) {
    // Patches: 2-byte offset into the first 8 KiB, then 8 bytes of value.
    for (std::size_t i = 1; i + 10 <= size; i += 10) {
      const std::size_t offset =
          (static_cast<std::size_t>(data[i]) | (static_cast<std::size_t>(data[i + 1]) << 8)) % 8192;
      std::memcpy(image.data() + offset, data + i + 2, std::min<std::size_t>(8, 8192 - offset));
    }
  }
  if (pwrite(s.fd, image.data(), image.size(), 0) != static_cast<ssize_t>(image.size())) std::abort();
  // Some inputs also get a mapping one page short of what the header says.
  const bool shrink = size > 1 && (data[size - 1] & 0x80) != 0;
  if (shrink && ftruncate(s.fd, kRegionSize - 4096) != 0) std::abort();
  auto backend = ivshmfs::Backend::open(s.path, {true, false, 0});
  if (backend) {
    if (auto region = ivshmfs::Region::open(std::move(backend).value())) exercise(**region, *region);
  }
  if (shrink && ftruncate(s.fd, kRegionSize) != 0) std::abort();
  return 0;
}
