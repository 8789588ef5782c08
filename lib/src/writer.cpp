// SPDX-License-Identifier: MIT
#include "ivshmfs/writer.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <ctime>

#include <spdlog/spdlog.h>

#include "ivshmfs/failpoint.hpp"
#include "ivshmfs/wake.hpp"
#include "shared.hpp"

namespace ivshmfs {

using detail::compare_exchange;
using detail::load_acquire;
using detail::load_relaxed;
using detail::store_relaxed;
using detail::store_release;

namespace {

// How far past an append's end the owner announces (reserve_end), so that
// small appends re-announce only now and then. Zero: every append announces
// exactly its own range, so an idle owner has announced nothing it has not
// published and a takeover from it needs no fence (no hole).
constexpr uint64_t kAnnounceLease = 0;

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

void store_identity(ivshmfs_control* c, const ProcessIdentity& self) {
  store_relaxed(c->owner_pid, self.pid);
  store_relaxed(c->owner_host, local_host_id());
  store_relaxed(c->owner_pid_ns, self.pid_ns);
  store_relaxed(c->owner_start_time, self.start_time);
}

// The hole as the control block states it, if it fits in the data area.
bool valid_hole(uint64_t offset, uint64_t length, uint64_t capacity) {
  return length != 0 && offset <= capacity && length <= capacity - offset;
}

std::string second_hole(const std::string& path, uint32_t id) {
  return path + ": partition " + std::to_string(id) +
         ": its owner may be stopped in the middle of a copy, and an earlier takeover already fenced off a range "
         "of it (one per partition); make sure that owner is gone (then it is taken over without a fence) or format "
         "the region anew ('ivshmctl format --force " +
         path + "', which destroys its contents)";
}

std::string ring_mid_append(const std::string& path, uint32_t id) {
  return path + ": partition " + std::to_string(id) +
         " is a ring whose owner announced bytes it has not published: it may be stopped in the middle of a copy, "
         "and a ring cannot fence that copy off (the owner could copy it later over newer bytes); let that owner "
         "finish (continue it), or make sure it is gone (then it is taken over at once), or format the region anew";
}

// After the token swap: makes sure nothing the former owner may still copy
// is ever published, and finishes what a former owner left half done.
// `fence`: the former owner is not proven gone. `announced` and `base` were
// loaded (seq_cst) after the swap. Fails only when a second hole is needed.
Result<void> settle(ivshmfs_control* c, const PartitionInfo& p, const std::string& path, bool fence, uint64_t announced,
                    uint64_t base) {
  const uint64_t capacity = p.capacity;
  uint64_t head = load_acquire(c->head);
  uint64_t fenced_at = 0;
  bool fencing = false;
  // A ring is never fenced (the claim refused an owner that may be copying):
  // a fence bit on its head was stored by a hostile peer; drop it.
  while (p.ring && (head & IVSHMFS_HEAD_FENCE) != 0 && !compare_exchange(c->head, head, head & ~IVSHMFS_HEAD_FENCE)) {
  }
  for (;;) {
    if (p.ring) break;
    if ((head & IVSHMFS_HEAD_FENCE) != 0) {  // a taker died mid-fence: finish its fence
      fenced_at = head & ~IVSHMFS_HEAD_FENCE;
      fencing = true;
      break;
    }
    if (!fence || announced <= head) break;  // nothing can be copied past the head
    // Freeze the head: the former owner's publish (a CAS from `head`) fails
    // from now on. If its publish lands first, try again from there.
    if (compare_exchange(c->head, head, head | IVSHMFS_HEAD_FENCE)) {
      IVSHMFS_FAILPOINT("claim.mid-fence");
      fenced_at = head;
      fencing = true;
      break;
    }
  }
  if (fencing) {
    // Everything the former owner may copy lies in [fenced_at, announced):
    // a hole in the data area, in the former owner's frame (base).
    const uint64_t from = fenced_at >= base ? std::min(fenced_at - base, capacity) : 0;
    uint64_t to = announced > base ? std::min(announced - base, capacity) : 0;
    to = std::max(to, from);
    const uint64_t ho = load_relaxed(c->hole_offset);
    const uint64_t hl = load_relaxed(c->hole_length);
    if (valid_hole(ho, hl, capacity) && to > from) {
      if (ho != from) {
        // One hole per partition: the head stays frozen (nothing can be
        // published, nothing is lost) until the region is formatted anew.
        return make_error(Errc::claimed, second_hole(path, p.id));
      }
      to = std::max(to, ho + hl);  // the dead taker's hole, grown to cover ours
    }
    if (to > from) {
      store_relaxed(c->hole_offset, from);
      store_release(c->hole_length, to - from);
    } else if (valid_hole(ho, hl, capacity) && ho == from) {
      to = ho + hl;
    }
    // Readers apply the hole once the head has passed it.
    store_release(c->head, base + to);
    spdlog::warn("{}: partition {}: fenced off {} bytes the former owner may still be copying", path, p.id, to - from);
  }
  // A reset the former owner left half done (odd generation), or positions
  // that cannot be (base past head): finish a reset, never undo one. The
  // taker first moves the generation to an odd value of its own, so that the
  // former owner, should it resume, can neither undo nor close the reset.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    uint64_t gen = detail::load_seq_cst(c->generation);
    head = load_acquire(c->head) & ~IVSHMFS_HEAD_FENCE;
    uint64_t current_base = load_acquire(c->base);
    const bool impossible = current_base > head || (!p.ring && head - current_base > capacity);
    if (gen % 2 == 0 && !impossible) break;
    const uint64_t mine = gen + (gen % 2 != 0 ? 2 : 1);
    if (!compare_exchange(c->generation, gen, mine)) continue;  // the former owner undid its mark
    head = load_acquire(c->head) & ~IVSHMFS_HEAD_FENCE;
    current_base = load_acquire(c->base);
    compare_exchange(c->base, current_base, head);  // fails only if the former owner moved it to the head
    store_relaxed(c->last_write_ns, commit_clock_ns());
    uint64_t odd = mine;
    compare_exchange(c->generation, odd, mine + 1);
    spdlog::info("{}: partition {}: finished a reset its former owner left half done", path, p.id);
    break;
  }
  return {};
}

}  // namespace

PartitionWriter::PartitionWriter(std::shared_ptr<Region> region, const PartitionInfo& partition, uint64_t token)
    : region_(std::move(region)),
      partition_(partition),
      backend_(region_->backend(partition)),
      control_(region_->control(partition)),
      data_(region_->data(partition)),
      header_(reinterpret_cast<ivshmfs_header*>(backend_.bytes().data())),
      format_id_(region_->info().format_id),
      token_(token),
      identity_(local_process_identity()),
      futex_wakes_(futex_wakes_possible(backend_)) {
  load_positions();
}

void PartitionWriter::load_positions() noexcept {
  head_ = load_acquire(control_->head) & ~IVSHMFS_HEAD_FENCE;
  base_ = load_acquire(control_->base);
  const uint64_t ho = load_relaxed(control_->hole_offset);
  const uint64_t hl = load_relaxed(control_->hole_length);
  hole_offset_ = valid_hole(ho, hl, partition_.capacity) ? ho : 0;
  hole_length_ = valid_hole(ho, hl, partition_.capacity) ? hl : 0;
  announced_ = load_acquire(control_->reserve_end);
  if (partition_.ring) {
    // A ring's takeovers never fence, so it has no hole (a stray one is ignored).
    hole_offset_ = hole_length_ = 0;
    if (head_ < base_) base_ = head_;
    return;
  }
  // Positions a hostile peer made impossible: write nothing (every publish
  // would fail); a reset repairs them.
  if (head_ < base_ || head_ - base_ > partition_.capacity) base_ = head_ - std::min(head_, partition_.capacity);
}

Result<std::unique_ptr<PartitionWriter>> PartitionWriter::claim(std::shared_ptr<Region> region, uint32_t id,
                                                                const ClaimOptions& options) {
  if (!region) return make_error(Errc::invalid_argument, "no region");
  const PartitionInfo* p = region->find(id);
  if (p == nullptr) {
    return make_error(Errc::no_such_partition, region->path() + ": no partition " + std::to_string(id) +
                                                   " (the region has " +
                                                   std::to_string(region->info().partition_count) + ")");
  }
  if (!region->backend(*p).writable()) {
    return make_error(Errc::read_only,
                      region->backend(*p).path() + ": mapped read-only, cannot write partition " + std::to_string(id));
  }
  ivshmfs_control* c = region->control(*p);
  const uint64_t token = detail::random_nonzero();
  bool fence = false;
  uint64_t previous = 0;
  for (;;) {
    uint64_t current = load_acquire(c->owner_token);
    previous = current;
    fence = false;
    if (current != 0) {
      auto s = region->stat(id, options.liveness);
      if (!s) return std::move(s).error();
      if (s->alive && !options.force) {
        return make_error(Errc::claimed, region->backend(*p).path() + ": partition " + std::to_string(id) +
                                             " is owned by a live writer: " + describe_owner(*s));
      }
      // An owner not proven gone may be stopped in the middle of a copy.
      fence = !s->owner_dead;
      // One hole per partition: refuse before touching anything when a
      // fence would need a second one (the owner keeps its partition).
      const uint64_t head = s->head & ~IVSHMFS_HEAD_FENCE;
      if (p->ring && fence && s->reserve_end > head) {
        return make_error(Errc::claimed, ring_mid_append(region->backend(*p).path(), id));
      }
      if (!p->ring && fence && s->reserve_end > head && valid_hole(s->hole_offset, s->hole_length, p->capacity) &&
          s->hole_offset != std::min(head - std::min(head, s->base), p->capacity)) {
        return make_error(Errc::claimed, second_hole(region->backend(*p).path(), id));
      }
      if (s->alive) {
        spdlog::warn("{}: taking partition {} from a live owner ({}) as forced", region->backend(*p).path(), id,
                     describe_owner(*s));
      } else {
        spdlog::info("{}: taking over partition {} from a {} owner ({})", region->backend(*p).path(), id,
                     s->owner_dead ? "vanished" : "stale", describe_owner(*s));
      }
    }
    // seq_cst: the other half of the owner's announce-then-check (Dekker).
    if (detail::compare_exchange_seq_cst(c->owner_token, current, token)) break;
  }
  IVSHMFS_FAILPOINT("claim.after-token");
  const uint64_t announced = detail::load_seq_cst(c->reserve_end);
  const uint64_t base = detail::load_seq_cst(c->base);
  if (p->ring && fence && announced > (load_acquire(c->head) & ~IVSHMFS_HEAD_FENCE)) {
    // The former owner announced an append between our look and the swap: it
    // may be copying. Hand the partition back (nothing of ours was written).
    uint64_t mine = token;
    compare_exchange(c->owner_token, mine, previous);
    return make_error(Errc::claimed, ring_mid_append(region->backend(*p).path(), id));
  }
  const uint64_t now = wall_clock_ns();
  const ProcessIdentity self = local_process_identity();
  store_identity(c, self);
  store_relaxed(c->owner_since_ns, now);
  store_release(c->owner_heartbeat_ns, now);
  if (auto settled = settle(c, *p, region->backend(*p).path(), fence, announced, base); !settled) {
    uint64_t mine = token;
    compare_exchange(c->owner_token, mine, 0);
    return std::move(settled).error();
  }

  auto writer = std::unique_ptr<PartitionWriter>(new PartitionWriter(std::move(region), *p, token));
  // Back and fault in the partition now: a sparse file on a full filesystem
  // fails here with ENOSPC (the writer's destructor releases the claim)
  // rather than with SIGBUS at some later append.
  if (auto r = writer->backend_.ensure_backed(p->data_offset, p->capacity); !r) return std::move(r).error();
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
  return make_error(Errc::not_owner, w.region()->backend(w.partition()).path() + ": partition " +
                                         std::to_string(w.id()) +
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
    return make_error(Errc::busy, backend_.path() + ": partition " + std::to_string(id()) +
                                      ": a reservation is still open (one writer thread at a time)");
  }
  if (auto r = still_owner(); !r) return std::move(r).error();
  return make_error(Errc::no_space, backend_.path() + ": partition " + std::to_string(id()) + " is full (" +
                                        std::to_string(partition_.capacity) + " bytes)");
}

PartitionWriter::Placement PartitionWriter::place(std::size_t want, bool contiguous) const noexcept {
  const uint64_t capacity = partition_.capacity;
  if (partition_.ring) {
    // Position base + f lives at data[f % capacity]; the caller refused
    // more than a ring. Wraps once at most.
    const uint64_t f = head_ - base_;
    Placement pl;
    pl.first_at = f % capacity;
    pl.first = static_cast<std::size_t>(std::min<uint64_t>(want, capacity - pl.first_at));
    if (!contiguous) pl.second = want - pl.first;
    pl.end = f + pl.first + pl.second;
    return pl;
  }
  const uint64_t at = head_ - base_;  // <= capacity (load_positions)
  Placement pl;
  pl.first_at = at;
  if (hole_length_ != 0 && at <= hole_offset_) [[unlikely]] {
    // The hole lies ahead: fill up to it, then continue past it. Readers see
    // the head jump over the hole with the bytes after it, in one publish.
    const uint64_t before = hole_offset_ - at;
    const uint64_t after_at = hole_offset_ + hole_length_;
    if (want <= before) {
      pl.first = want;
    } else if (contiguous && before > 0) {
      pl.first = static_cast<std::size_t>(before);
    } else {
      pl.first = contiguous ? 0 : static_cast<std::size_t>(before);
      pl.second_at = after_at;
      pl.second = static_cast<std::size_t>(std::min<uint64_t>(want - pl.first, capacity - after_at));
      pl.end = pl.second > 0 ? after_at + pl.second : at + pl.first;
      if (contiguous) {  // one piece, past the hole
        pl.first_at = pl.second_at;
        pl.first = pl.second;
        pl.second = 0;
      }
      return pl;
    }
    pl.end = at + pl.first;
    return pl;
  }
  pl.first = static_cast<std::size_t>(std::min<uint64_t>(want, capacity - at));
  pl.end = at + pl.first;
  return pl;
}

[[gnu::noinline]] bool PartitionWriter::announce(uint64_t end) noexcept {
  const uint64_t target = std::min(end + kAnnounceLease, base_ + partition_.capacity);
  detail::raise_to_seq_cst(control_->reserve_end, std::max(target, end));
  // After the announcement, not before: a taker that swapped the token
  // before this load sees the announcement (Dekker), and fences it off.
  if (detail::load_seq_cst(control_->owner_token) != token_) return false;
  // A ring's readers trust bytes by reserve_end: it must be visible before
  // any byte copied after it (a store barrier; free on x86-64).
  std::atomic_thread_fence(std::memory_order_release);
  announced_ = std::max(target, end);
  return true;
}

[[gnu::always_inline]] inline bool PartitionWriter::publish(uint64_t end) noexcept {
  store_relaxed(control_->last_write_ns, commit_clock_ns());
  IVSHMFS_FAILPOINT("writer.before-publish");
  uint64_t expected = head_;
  if (!compare_exchange(control_->head, expected, end)) [[unlikely]]
    return publish_over(expected, end);
  head_ = end;
  if (futex_wakes_) wake_peers(*region_, partition_);
  return true;
}

// The head is not where this owner left it. With the claim no longer ours: a
// takeover fenced it, so nothing of this is ever shown. Otherwise
// a peer scribbled on the head while we still own the partition: our own copy
// is authoritative, as for every other position. (Should a taker swap the
// token after the check, its fence CAS and ours race on the same value; the
// loser sees the winner's head.)
[[gnu::cold, gnu::noinline]] bool PartitionWriter::publish_over(uint64_t seen, uint64_t end) noexcept {
  // (A taker swaps the token before it sets the fence bit: seeing the bit
  // with our token still in place means a peer wrote it.)
  if (detail::load_seq_cst(control_->owner_token) != token_) return false;
  if (!compare_exchange(control_->head, seen, end)) return false;
  head_ = end;
  if (futex_wakes_) wake_peers(*region_, partition_);
  return true;
}

namespace {
[[gnu::cold, gnu::noinline]] Error lost_publish(const PartitionWriter& w) {
  if (!w.owns()) return lost_claim(w);
  return make_error(Errc::not_owner, w.region()->backend(w.partition()).path() + ": partition " +
                                         std::to_string(w.id()) +
                                         ": its head was moved behind this writer's back (a peer wrote into "
                                         "the control block); nothing was published");
}
}  // namespace

[[gnu::cold, gnu::noinline]] Error PartitionWriter::too_big(std::size_t size) const {
  return make_error(Errc::too_big, backend_.path() + ": partition " + std::to_string(id()) + " is a ring of " +
                                       std::to_string(partition_.capacity) + " bytes: an append of " +
                                       std::to_string(size) + " bytes would overwrite itself (refused whole)");
}

Result<PartitionWriter::Reservation> PartitionWriter::reserve(std::size_t max) {
  if (max == 0) return make_error(Errc::invalid_argument, "reserve: zero bytes asked for");
  if (!may_write()) [[unlikely]]
    return refusal();
  const Placement pl = place(max, true);
  if (pl.first == 0) [[unlikely]]
    return refusal();
  if (base_ + pl.end > announced_ && !announce(base_ + pl.end)) [[unlikely]]
    return lost_claim(*this);
  IVSHMFS_FAILPOINT("writer.after-announce");
  reserved_ = true;
  // The reservation remembers where its bytes start in the owner's frame:
  // a data-area offset, which for a ring is the file offset (it wraps).
  return Reservation(*this, partition_.ring ? head_ - base_ : pl.first_at, {data_ + pl.first_at, pl.first});
}

std::size_t PartitionWriter::Reservation::commit(std::size_t n) noexcept {
  if (writer_ == nullptr) return 0;
  if (writer_->backend_.mapping_lost()) [[unlikely]]
    n = 0;  // the bytes went to a private page, never to the region
  n = std::min(n, bytes_.size());
  if (n > 0 && !writer_->publish(writer_->base_ + length_ + n)) n = 0;
  writer_->reserved_ = false;
  writer_ = nullptr;
  bytes_ = {};
  return n;
}

Result<std::size_t> PartitionWriter::append(std::span<const std::byte> bytes) {
  if (bytes.empty()) return std::size_t{0};
  if (!may_write()) [[unlikely]]
    return refusal();
  if (partition_.ring && bytes.size() > partition_.capacity) [[unlikely]]
    return too_big(bytes.size());
  const Placement pl = place(bytes.size(), false);
  const std::size_t n = pl.first + pl.second;
  if (n == 0) [[unlikely]]
    return refusal();
  const uint64_t end = base_ + pl.end;
  if (end > announced_ && !announce(end)) [[unlikely]]
    return lost_claim(*this);
  IVSHMFS_FAILPOINT("writer.after-announce");
  if (partition_.ring) {
    detail::racy_copy(data_ + pl.first_at, bytes.data(), pl.first);
    if (pl.second > 0) detail::racy_copy(data_ + pl.second_at, bytes.data() + pl.first, pl.second);
  } else {
    std::memcpy(data_ + pl.first_at, bytes.data(), pl.first);
    if (pl.second > 0) [[unlikely]]
      std::memcpy(data_ + pl.second_at, bytes.data() + pl.first, pl.second);
  }
  if (backend_.mapping_lost()) [[unlikely]]
    return backend_.loss_error();
  IVSHMFS_FAILPOINT("writer.after-copy");
  if (!publish(end)) [[unlikely]]
    return lost_publish(*this);
  return n;
}

Result<void> PartitionWriter::reset() {
  if (!may_write()) return refusal();
  // Tells the heartbeat that an odd generation may be ours (seq_cst: stored
  // before our generation CAS, seen by a heartbeat that sees that CAS).
  resetting_.store(true, std::memory_order_seq_cst);
  struct Done {
    std::atomic<bool>& flag;
    ~Done() { flag.store(false, std::memory_order_seq_cst); }
  } done{resetting_};
  IVSHMFS_FAILPOINT("writer.reset-begin");
  uint64_t gen = load_acquire(control_->generation);
  if (gen % 2 != 0) {
    // Odd, though this owner finished every reset it began and the claim
    // finished its predecessor's: a displaced owner stopped right after
    // making it odd. It re-checks its claim before it changes anything else,
    // so making the generation even again is all that is left to do.
    compare_exchange(control_->generation, gen, gen + 1);
    gen = load_acquire(control_->generation);
  }
  uint64_t expected = gen;
  if (gen % 2 != 0 || !detail::compare_exchange_seq_cst(control_->generation, expected, gen + 1)) {
    if (auto r = still_owner(); !r) return r;
    return make_error(Errc::busy, backend_.path() + ": partition " + std::to_string(id()) +
                                      ": its generation changed under the reset; try again");
  }
  IVSHMFS_FAILPOINT("writer.reset-odd");
  // Re-check the claim after the generation went odd (seq_cst on both sides):
  // a taker that swapped the token before this load sees the odd generation
  // and finishes this reset itself; one that swapped later leaves it to us.
  if (detail::load_seq_cst(control_->owner_token) != token_) {
    expected = gen + 1;
    compare_exchange(control_->generation, expected, gen);  // nothing changed: undo the mark
    return lost_claim(*this);
  }
  // The new generation starts at the head. A CAS, so that a displaced owner
  // resuming here cannot move a base the taker already moved.
  expected = base_;
  const bool moved = compare_exchange(control_->base, expected, head_);
  IVSHMFS_FAILPOINT("writer.mid-reset");
  store_relaxed(control_->last_write_ns, commit_clock_ns());
  expected = gen + 1;
  const bool closed = compare_exchange(control_->generation, expected, gen + 2);
  if (!moved || !closed) return lost_claim(*this);
  base_ = head_;
  if (futex_wakes_) wake_peers(*region_, partition_);  // waiters compare the generation too
  return {};
}

Result<void> PartitionWriter::heartbeat() {
  if (auto r = still_owner(); !r) return std::move(r).error();
  store_release(control_->owner_heartbeat_ns, wall_clock_ns());
  // A claimer that lost the race for the token may have written its own
  // pid over ours: put ours back, or a peer could judge us by a dead process.
  if (load_relaxed(control_->owner_pid) != identity_.pid ||
      load_relaxed(control_->owner_start_time) != identity_.start_time ||
      load_relaxed(control_->owner_pid_ns) != identity_.pid_ns ||
      load_relaxed(control_->owner_host) != local_host_id()) {
    if (owns()) store_identity(control_, identity_);
  }
  // An odd generation this owner did not make: a displaced owner stopped
  // right after making it odd (it will find its claim gone and undo nothing
  // else). Readers would fail with EAGAIN until it resumes: make it even.
  // Only from the value seen, so it races harmlessly with that owner's undo.
  uint64_t gen = detail::load_seq_cst(control_->generation);
  if (gen % 2 != 0 && !resetting_.load(std::memory_order_seq_cst) && owns() &&
      compare_exchange(control_->generation, gen, gen + 1)) {
    spdlog::warn("{}: partition {}: closed a reset a displaced owner left half done", backend_.path(), id());
  }
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
