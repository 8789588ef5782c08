// SPDX-License-Identifier: MIT
// libFuzzer target: a hostile peer writing into the live metadata of a region
// that is already open, while this peer reads it and owns a partition.
//
// Region::open has validated the header and copied it; from then on any peer
// may store anything into the control blocks, the partition table and the
// header. The input is a program: each step either stores a value into one
// of those fields (as a peer would, with a 64-bit atomic store) or runs one
// operation of this peer (read, view, snapshot, stat, append, reserve and
// commit, reset, heartbeat, claim). A reader thread meanwhile runs read,
// view, snapshot and stat on every partition without pause. Partitions 0
// (owned here) and 2 are rings, 1 is sized, 3 gets the rest. None of it may
// crash, trip a sanitizer or touch memory outside the mapping: the mapping
// lies between PROT_NONE guard pages.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace {

constexpr std::size_t kRegionSize = 64 * 1024;
constexpr uint32_t kPartitions = 4;

// Opens the memfd so that its mapping lies between two PROT_NONE pages (the
// kernel picks the address: reserve guard + hole + guard and retry until the
// mapping lands in the hole).
std::unique_ptr<ivshmfs::Backend> open_guarded(const std::string& path) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<std::unique_ptr<ivshmfs::Backend>> misplaced;
  for (int attempt = 0; attempt < 256; ++attempt) {
    void* reserved =
        ::mmap(nullptr, kRegionSize + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved == MAP_FAILED) std::abort();
    auto* base = static_cast<std::byte*>(reserved);
    ::munmap(base + page, kRegionSize);
    auto backend = ivshmfs::Backend::open(path, {true, false, 0});
    if (!backend) std::abort();
    if ((*backend)->bytes().data() == base + page) return std::move(backend).value();  // guards stay for good
    ::munmap(base, page);
    ::munmap(base + page + kRegionSize, page);
    misplaced.push_back(std::move(backend).value());
  }
  std::abort();
}

struct Live {
  int fd = -1;
  std::vector<std::byte> formatted;  // the metadata as format left it
  std::shared_ptr<ivshmfs::Region> region;
  std::byte* base = nullptr;
  uint64_t metadata = 0;  // bytes before the first data area
};

void read_everything(const ivshmfs::Region& region, std::vector<std::byte>& buffer, uint64_t salt) {
  for (const auto& p : region.partitions()) {
    (void)region.read(p.id, salt % (p.capacity + 2), buffer);
    if (auto v = region.view(p.id, salt % 4096, SIZE_MAX); v && !v->bytes.empty()) {
      volatile std::byte first = v->bytes.front();  // both ends must be inside the mapping
      volatile std::byte last = v->bytes.back();
      (void)first;
      (void)last;
    }
    (void)region.snapshot(p.id);
    (void)region.stat(p.id, ivshmfs::LivenessPolicy{std::chrono::milliseconds(salt % 3)});
  }
}

Live& live() {
  static Live* l = [] {
    auto* made = new Live;
    made->fd = memfd_create("ivshmfs-fuzz-live", 0);
    if (made->fd < 0 || ftruncate(made->fd, kRegionSize) != 0) std::abort();
    const std::string path = "/proc/self/fd/" + std::to_string(made->fd);
    auto backend = open_guarded(path);
    ivshmfs::FormatOptions format;
    format.partitions = kPartitions;
    // Partitions of different sizes, two of them rings (the owned one a
    // single page, so appends wrap and too-big appends happen).
    format.layout = {{0, 4096, true}, {1, 12288, false}, {2, 0, true}};
    if (!ivshmfs::Region::format(*backend, format)) std::abort();
    made->base = backend->bytes().data();
    auto region = ivshmfs::Region::open(std::move(backend));
    if (!region) std::abort();
    made->region = std::move(region).value();
    made->metadata = made->region->info().data_offset;
    made->formatted.assign(made->base, made->base + made->metadata);
    // The concurrent reader: never stops, never synchronises with the input.
    std::thread([r = made->region] {
      std::vector<std::byte> buffer(8192);
      for (uint64_t salt = 0;; ++salt) read_everything(*r, buffer, salt * 2654435761U);
    }).detach();
    return made;
  }();
  return *l;
}

// The program's input, consumed from the front; zeros once it runs out.
struct Input {
  const uint8_t* data;
  std::size_t size;
  [[nodiscard]] bool empty() const { return size == 0; }
  uint64_t take(std::size_t bytes) {
    uint64_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) {
      v |= static_cast<uint64_t>(size > 0 ? *data : 0) << (8 * i);
      if (size > 0) {
        ++data;
        --size;
      }
    }
    return v;
  }
};

// The 64-bit words a peer could store into: every word of the metadata
// (header, partition table, control blocks); half the time one of the live
// fields of the control blocks, which the fuzzer would rarely hit otherwise.
uint64_t* target_word(Live& l, uint64_t selector) {
  auto* words = reinterpret_cast<uint64_t*>(l.base);
  if (selector & 1) {
    const auto& p = l.region->partitions()[(selector >> 1) % kPartitions];
    const uint64_t field = (selector >> 8) % (sizeof(ivshmfs_control) / 8);
    return words + p.control_offset / 8 + field;
  }
  return words + (selector >> 1) % (l.metadata / 8);
}

uint64_t interesting(uint64_t raw) {
  switch (raw & 7) {
    case 0: return raw >> 3;                       // anything
    case 1: return (raw >> 3) % 70000;             // near a partition's capacity
    case 2: return UINT64_MAX - ((raw >> 3) % 4);  // wraps
    case 3: return (raw >> 3) | 1;                 // odd: a reset under way
    case 4: return 0;
    default: return raw;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  Live& l = live();
  // Every input starts from a freshly formatted region (same format id, so
  // the open region still recognises it) and a writer that owns partition 0.
  if (pwrite(l.fd, l.formatted.data(), l.formatted.size(), 0) != static_cast<ssize_t>(l.formatted.size())) {
    std::abort();
  }
  ivshmfs::ClaimOptions claim;
  claim.heartbeat_interval = std::chrono::milliseconds(0);
  claim.force = true;
  auto owner = ivshmfs::PartitionWriter::claim(l.region, 0, claim);
  std::unique_ptr<ivshmfs::PartitionWriter> writer = owner ? std::move(owner).value() : nullptr;
  std::vector<std::byte> buffer(8192);
  std::vector<std::byte> payload(8192, std::byte{0x5a});

  Input in{data, size};
  for (int step = 0; step < 64 && !in.empty(); ++step) {
    const uint64_t op = in.take(1);
    const auto id = static_cast<uint32_t>(in.take(1) % (kPartitions + 1));  // one id that does not exist
    switch (op % 12) {
      case 0:
      case 1:
      case 2:
      case 3: {  // a peer stores into the metadata
        uint64_t* word = target_word(l, in.take(2));
        std::atomic_ref<uint64_t>(*word).store(interesting(in.take(8)), std::memory_order_release);
        break;
      }
      case 4: {
        auto n = l.region->read(id, in.take(4), buffer);
        if (n && *n > buffer.size()) std::abort();  // read more than it was given room for
        break;
      }
      case 5:
        if (auto v = l.region->view(id, in.take(4), in.take(2)); v && !v->bytes.empty()) {
          volatile std::byte last = v->bytes.back();
          (void)last;
        }
        break;
      case 6: (void)l.region->snapshot(id); break;
      case 7: (void)l.region->stat(id); break;
      case 8:
        if (writer) {
          auto n = writer->append({payload.data(), static_cast<std::size_t>(in.take(2) % payload.size())});
          if (n && *n > payload.size()) std::abort();
        }
        break;
      case 9:
        if (writer) {
          if (auto r = writer->reserve(1 + in.take(2) % 8192)) {
            std::memset(r->bytes().data(), 0x33, r->bytes().size());  // must be inside the partition
            r->commit(in.take(2));
          }
        }
        break;
      case 10:
        if (writer) (void)(in.take(1) & 1 ? writer->reset() : writer->heartbeat());
        break;
      default: {  // another claim, forced or not, by this process
        writer.reset();
        ivshmfs::ClaimOptions again;
        again.heartbeat_interval = std::chrono::milliseconds(0);
        again.force = (in.take(1) & 1) != 0;
        again.liveness.stale_after = std::chrono::milliseconds(0);
        if (auto w = ivshmfs::PartitionWriter::claim(l.region, id, again)) writer = std::move(w).value();
        break;
      }
    }
  }
  read_everything(*l.region, buffer, size);
  return 0;
}
