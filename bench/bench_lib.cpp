// SPDX-License-Identifier: MIT
// In-process throughput of the library against its ceiling, with Google
// Benchmark. For every message size:
//   memcpy_write / memcpy_read  private buffer -> /dev/shm mapping and back
//   lib_append                  PartitionWriter::append into the own partition
//   lib_read                    Region::read of a partition another process wrote
//   lib_append_split / lib_read_split
//                               the same on a split region (one backend file
//                               per partition, the peer's piece mapped
//                               read-only): what the split mode costs
// Every benchmark walks the same window (the partition capacity) sequentially
// and wraps at its end, so the ceiling and the library touch the same memory.
//
// Extra flag (before Google Benchmark's own): --max-size=BYTES drops larger
// message sizes (the quick mode stops at 1 MiB).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"

namespace {

constexpr std::size_t kWindow = std::size_t{64} << 20;  // bytes walked before wrapping
constexpr uint32_t kOwnId = 0;                          // appended to by this process
constexpr uint32_t kPeerId = 1;                         // written by a child process, read here

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_lib: %s\n", what.c_str());
  std::exit(1);
}

// A plain /dev/shm mapping of kWindow bytes: the ceiling.
struct ShmWindow {
  std::string path;
  std::byte* base = nullptr;

  ShmWindow() {
    path = "/dev/shm/ivshmfs-bench-memcpy-" + std::to_string(::getpid());
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(kWindow)) != 0) die("cannot create " + path);
    void* p = ::mmap(nullptr, kWindow, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) die("cannot map " + path);
    base = static_cast<std::byte*>(p);
    std::memset(base, 0x5a, kWindow);  // fault every page in before timing
  }
  ~ShmWindow() {
    ::munmap(base, kWindow);
    ::unlink(path.c_str());
  }
};

// A piece of a split region holds a page of metadata and its partition, and
// its size is a power of two: the smallest that holds kWindow.
constexpr uint64_t kSplitPiece = uint64_t{kWindow} * 2;

// A region of two partitions of (at least) kWindow bytes each: ours, and a
// peer's that a child process fills completely before any read benchmark
// runs. Shared mode: one file. Split mode: one file per partition; each
// process opens its own piece read-write and the other's read-only.
struct LibRegion {
  std::string path;
  bool split = false;
  std::shared_ptr<ivshmfs::Region> region;
  std::unique_ptr<ivshmfs::PartitionWriter> writer;

  explicit LibRegion(bool split_mode) : split(split_mode) {
    path = std::string("/dev/shm/ivshmfs-bench-") + (split ? "split-" : "lib-") + std::to_string(::getpid());
    ivshmfs::RegionOpenOptions options;
    options.writable = true;
    if (split) {
      remove_files();
      if (auto f = ivshmfs::Region::format_split(path, 2, kSplitPiece, false); !f) die(f.error().message);
      options.own_id = kPeerId;
    } else {
      ::unlink(path.c_str());
      options.create = true;
      options.create_size = IVSHMFS_PAGE_SIZE + 2 * uint64_t{kWindow};
      options.create_partitions = 2;
    }
    {
      // The peer: another process claims partition 1 and fills it.
      const pid_t child = ::fork();
      if (child < 0) die("fork");
      if (child == 0) {
        auto r = ivshmfs::Region::open_path(path, options);
        if (!r) die(r.error().message);
        auto w = ivshmfs::PartitionWriter::claim(*r, kPeerId);
        if (!w) die(w.error().message);
        std::vector<std::byte> chunk(std::size_t{1} << 20, std::byte{0x42});
        for (std::size_t done = 0; done < kWindow; done += chunk.size()) {
          auto n = (*w)->append(chunk);
          if (!n) die(n.error().message);
        }
        std::_Exit(0);
      }
      int status = 0;
      if (::waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        die("the writer process failed");
      }
    }
    options.create = false;
    if (split) options.own_id = kOwnId;
    auto r = ivshmfs::Region::open_path(path, options);
    if (!r) die(r.error().message);
    region = *r;
    auto w = ivshmfs::PartitionWriter::claim(region, kOwnId);
    if (!w) die(w.error().message);
    writer = std::move(*w);
    if (region->split() != split) die("unexpected region mode");
    if (region->find(kOwnId)->capacity < kWindow || (!split && region->find(kOwnId)->capacity != kWindow)) {
      die("unexpected partition capacity");
    }
    // Fault our own partition in, as the ceiling's memset does.
    std::vector<std::byte> chunk(std::size_t{1} << 20);
    for (std::size_t done = 0; done < kWindow; done += chunk.size()) {
      if (auto n = writer->append(chunk); !n) die(n.error().message);
    }
    if (auto x = writer->reset(); !x) die(x.error().message);
  }
  ~LibRegion() {
    writer.reset();
    region.reset();
    remove_files();
  }
  void remove_files() const {
    if (!split) {
      ::unlink(path.c_str());
      return;
    }
    for (uint32_t id = 0; id < 2; ++id) ::unlink(ivshmfs::split_piece_path(path, id).c_str());
  }
};

ShmWindow& shm() {
  static ShmWindow w;
  return w;
}
LibRegion& lib() {
  static LibRegion r(false);
  return r;
}
LibRegion& lib_split() {
  static LibRegion r(true);
  return r;
}

std::vector<std::byte> private_buffer(std::size_t size) { return std::vector<std::byte>(size, std::byte{0x17}); }

void BM_memcpy_write(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  std::byte* dst = shm().base;
  auto src = private_buffer(size);
  std::size_t off = 0;
  for (auto _ : state) {
    if (off + size > kWindow) off = 0;
    std::memcpy(dst + off, src.data(), size);
    benchmark::ClobberMemory();
    off += size;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}

void BM_memcpy_read(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const std::byte* src = shm().base;
  auto dst = private_buffer(size);
  std::size_t off = 0;
  for (auto _ : state) {
    if (off + size > kWindow) off = 0;
    std::memcpy(dst.data(), src + off, size);
    benchmark::ClobberMemory();
    off += size;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}

void lib_append(benchmark::State& state, LibRegion& lr) {
  const auto size = static_cast<std::size_t>(state.range(0));
  auto& w = *lr.writer;
  auto src = private_buffer(size);
  if (auto x = w.reset(); !x) state.SkipWithError(x.error().message.c_str());
  std::size_t off = 0;
  for (auto _ : state) {
    if (off + size > kWindow) {
      (void)w.reset();
      off = 0;
    }
    auto n = w.append(src);
    if (!n || *n != size) {
      state.SkipWithError(n ? "short append" : n.error().message.c_str());
      break;
    }
    off += size;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}

void lib_read(benchmark::State& state, LibRegion& lr) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const auto& region = *lr.region;
  auto dst = private_buffer(size);
  std::size_t off = 0;
  for (auto _ : state) {
    if (off + size > kWindow) off = 0;
    auto n = region.read(kPeerId, off, dst);
    if (!n || *n != size) {
      state.SkipWithError(n ? "short read" : n.error().message.c_str());
      break;
    }
    off += size;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}

void BM_lib_append(benchmark::State& state) { lib_append(state, lib()); }
void BM_lib_read(benchmark::State& state) { lib_read(state, lib()); }
void BM_lib_append_split(benchmark::State& state) { lib_append(state, lib_split()); }
void BM_lib_read_split(benchmark::State& state) { lib_read(state, lib_split()); }

}  // namespace

int main(int argc, char** argv) {
  long long max_size = 16LL << 20;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--max-size=", 0) == 0) {
      max_size = std::atoll(a.c_str() + 11);
    } else {
      args.push_back(argv[i]);
    }
  }
  const std::vector<long long> sizes = {64, 4096, 65536, 1LL << 20, 16LL << 20};
  struct Entry {
    const char* name;
    void (*fn)(benchmark::State&);
  };
  const Entry entries[] = {{"memcpy_write", BM_memcpy_write},         {"lib_append", BM_lib_append},
                           {"memcpy_read", BM_memcpy_read},           {"lib_read", BM_lib_read},
                           {"lib_append_split", BM_lib_append_split}, {"lib_read_split", BM_lib_read_split}};
  // Sizes outermost: the ceiling and the library run next to each other.
  for (long long s : sizes) {
    if (s > max_size) continue;
    for (const auto& e : entries) benchmark::RegisterBenchmark(e.name, e.fn)->Arg(s);
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
