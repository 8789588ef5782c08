// SPDX-License-Identifier: MIT
#include "ivshmfs/writer.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <ctime>

#include <spdlog/spdlog.h>

#include "shared.hpp"

namespace ivshmfs {

using detail::compare_exchange;
using detail::load_acquire;
using detail::load_relaxed;
using detail::store_relaxed;
using detail::store_release;

namespace {

// A forced takeover waits this long before writing, so that an append the
// displaced owner had already begun (it checked its token just before) has
// finished copying. The longest append copies one partition: well under this.
constexpr auto kTakeoverGrace = std::chrono::milliseconds(200);

std::string describe_owner(const PartitionStat& s) {
  const uint64_t now = wall_clock_ns();
  const time_t since = static_cast<time_t>(s.owner_since_ns / 1'000'000'000ULL);
  char when[64] = "?";
  tm local{};
  if (localtime_r(&since, &local) != nullptr) std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &local);
  const double beat_age = s.owner_heartbeat_ns <= now ? static_cast<double>(now - s.owner_heartbeat_ns) / 1e9 : 0.0;
  return "pid " + std::to_string(s.owner_pid) + (s.owner_local ? " on this system" : " on another system") + " since " +
         when + " (last heartbeat " + fmt::format("{:.1f}", beat_age) + " s ago)";
}

// The time stamped on a commit or reset (last_write_ns, shown as the file's
// mtime). The kernel's coarse clock, like the mtime of a regular file: one
// tick of resolution, and ~3 ns instead of ~20 ns for CLOCK_REALTIME, which
// is most of the fixed cost of a small append.
[[gnu::always_inline]] inline uint64_t commit_clock_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// Finishes a reset that a crashed owner left half done (odd generation).
void repair_generation(ivshmfs_control* c) {
  const uint64_t gen = load_acquire(c->generation);
  if (gen % 2 != 0) {
    store_relaxed(c->committed_length, 0);
    store_release(c->generation, gen + 1);
  }
}

}  // namespace

PartitionWriter::PartitionWriter(std::shared_ptr<Region> region, const PartitionInfo& partition, uint64_t token)
    : region_(std::move(region)),
      partition_(partition),
      control_(region_->control(partition)),
      data_(region_->data(partition)),
      header_(reinterpret_cast<ivshmfs_header*>(region_->backend().bytes().data())),
      format_id_(region_->info().format_id),
      token_(token),
      length_(std::min(load_acquire(control_->committed_length), partition.capacity)) {}

Result<std::unique_ptr<PartitionWriter>> PartitionWriter::claim(std::shared_ptr<Region> region, uint32_t id,
                                                                const ClaimOptions& options) {
  if (!region) return make_error(Errc::invalid_argument, "no region");
  const PartitionInfo* p = region->find(id);
  if (p == nullptr) {
    return make_error(Errc::no_such_partition, region->backend().path() + ": no partition " + std::to_string(id) +
                                                   " (the region has " +
                                                   std::to_string(region->info().partition_count) + ")");
  }
  if (!region->backend().writable()) {
    return make_error(Errc::read_only,
                      region->backend().path() + ": mapped read-only, cannot write partition " + std::to_string(id));
  }
  ivshmfs_control* c = region->control(*p);
  const uint64_t token = detail::random_nonzero();
  bool displaced_live_owner = false;
  for (;;) {
    uint64_t current = load_acquire(c->owner_token);
    if (current != 0) {
      auto s = region->stat(id, options.liveness);
      if (!s) return std::move(s).error();
      if (s->alive && !options.force) {
        return make_error(Errc::claimed, region->backend().path() + ": partition " + std::to_string(id) +
                                             " is owned by a live writer: " + describe_owner(*s));
      }
      if (s->alive) {
        displaced_live_owner = true;
        spdlog::warn("{}: taking partition {} from a live owner ({}) as forced", region->backend().path(), id,
                     describe_owner(*s));
      } else {
        spdlog::info("{}: taking over partition {} from a stale owner ({})", region->backend().path(), id,
                     describe_owner(*s));
      }
    }
    if (compare_exchange(c->owner_token, current, token)) break;
  }
  const uint64_t now = wall_clock_ns();
  store_relaxed(c->owner_pid, static_cast<uint64_t>(::getpid()));
  store_relaxed(c->owner_host, local_host_id());
  store_relaxed(c->owner_since_ns, now);
  store_release(c->owner_heartbeat_ns, now);
  if (displaced_live_owner) std::this_thread::sleep_for(kTakeoverGrace);
  repair_generation(c);

  auto writer = std::unique_ptr<PartitionWriter>(new PartitionWriter(std::move(region), *p, token));
  // Back and fault in the partition now: a sparse file on a full filesystem
  // fails here with ENOSPC (the writer's destructor releases the claim)
  // rather than with SIGBUS at some later append.
  if (auto r = writer->region_->backend().ensure_backed(p->data_offset, p->capacity); !r) return std::move(r).error();
  if (options.heartbeat_interval.count() > 0) {
    writer->heartbeat_thread_ =
        std::jthread([w = writer.get(), interval = options.heartbeat_interval](const std::stop_token& stop) {
          std::mutex m;
          std::condition_variable_any cv;
          std::unique_lock lock(m);
          while (!stop.stop_requested()) {
            cv.wait_for(lock, stop, interval, [] { return false; });
            if (stop.stop_requested()) break;
            if (auto r = w->heartbeat(); !r) {
              spdlog::error("{}", r.error().message);
              break;
            }
          }
        });
  }
  return writer;
}

PartitionWriter::~PartitionWriter() { release(); }

bool PartitionWriter::token_held() const noexcept { return load_relaxed(control_->owner_token) == token_; }

bool PartitionWriter::owns() const noexcept { return token_ != 0 && token_held(); }

namespace {
Error lost_claim(const PartitionWriter& w) {
  return make_error(Errc::not_owner, w.region()->backend().path() + ": partition " + std::to_string(w.id()) +
                                         " is no longer owned by this writer (its claim was taken over)");
}
}  // namespace

Result<void> PartitionWriter::still_owner() const {
  // A region formatted anew also zeroes our claim: report the cause, not the symptom.
  if (auto r = region_->check_format(); !r) return r;
  if (!owns()) return lost_claim(*this);
  return {};
}

[[gnu::always_inline]] inline bool PartitionWriter::may_write() const noexcept {
  return load_relaxed(header_->format_id) == format_id_ && owns() && !reserved_;
}

// Out of line and cold: the append path only pays for the two loads above.
[[gnu::cold, gnu::noinline]] Error PartitionWriter::refusal() const {
  if (reserved_) {
    return make_error(Errc::busy, region_->backend().path() + ": partition " + std::to_string(id()) +
                                      ": a reservation is still open (one writer thread at a time)");
  }
  if (auto r = still_owner(); !r) return std::move(r).error();
  return make_error(Errc::no_space, region_->backend().path() + ": partition " + std::to_string(id()) + " is full (" +
                                        std::to_string(partition_.capacity) + " bytes)");
}

[[gnu::always_inline]] inline void PartitionWriter::publish(uint64_t length) noexcept {
  length_ = length;
  store_relaxed(control_->last_write_ns, commit_clock_ns());
  store_release(control_->committed_length, length);
}

Result<PartitionWriter::Reservation> PartitionWriter::reserve(std::size_t max) {
  if (max == 0) return make_error(Errc::invalid_argument, "reserve: zero bytes asked for");
  const uint64_t room = partition_.capacity - length_;
  if (!may_write() || room == 0) [[unlikely]]
    return refusal();
  reserved_ = true;
  const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(room, max));
  return Reservation(*this, length_, {data_ + length_, n});
}

std::size_t PartitionWriter::Reservation::commit(std::size_t n) noexcept {
  if (writer_ == nullptr) return 0;
  if (writer_->region_->backend().mapping_lost()) [[unlikely]]
    n = 0;  // the bytes went to a private page, never to the region
  n = std::min(n, bytes_.size());
  if (n > 0) writer_->publish(length_ + n);
  writer_->reserved_ = false;
  writer_ = nullptr;
  bytes_ = {};
  return n;
}

Result<std::size_t> PartitionWriter::append(std::span<const std::byte> bytes) {
  if (bytes.empty()) return std::size_t{0};
  const uint64_t room = partition_.capacity - length_;
  if (!may_write() || room == 0) [[unlikely]]
    return refusal();
  const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(room, bytes.size()));
  std::memcpy(data_ + length_, bytes.data(), n);
  if (region_->backend().mapping_lost()) [[unlikely]]
    return region_->backend().loss_error();
  publish(length_ + n);
  return n;
}

Result<void> PartitionWriter::reset() {
  if (!may_write()) return refusal();
  const uint64_t gen = load_relaxed(control_->generation) & ~uint64_t{1};
  store_relaxed(control_->generation, gen + 1);  // odd: readers retry
  std::atomic_thread_fence(std::memory_order_release);
  store_relaxed(control_->committed_length, 0);
  store_relaxed(control_->last_write_ns, commit_clock_ns());
  store_release(control_->generation, gen + 2);
  length_ = 0;
  return {};
}

Result<void> PartitionWriter::heartbeat() {
  if (auto r = still_owner(); !r) return std::move(r).error();
  store_release(control_->owner_heartbeat_ns, wall_clock_ns());
  return {};
}

void PartitionWriter::release() noexcept {
  if (heartbeat_thread_.joinable()) {
    heartbeat_thread_.request_stop();
    heartbeat_thread_.join();
  }
  if (token_ == 0) return;
  uint64_t expected = token_;
  compare_exchange(control_->owner_token, expected, 0);
  token_ = 0;
}

}  // namespace ivshmfs
