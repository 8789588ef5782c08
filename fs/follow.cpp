// SPDX-License-Identifier: MIT
// Waiting for data: poll, the follow/ view (reads that park until the owner
// appends) and the look (tick) with which the change source notices peers'
// changes.
#include "fs_internal.hpp"

#include <poll.h>

#include <cstring>
#include <optional>
#include <vector>

#include "ivshmfs/identity.hpp"

namespace ivshmfs::fs {

using namespace detail;

void Filesystem::poll(fuse_req_t req, fuse_file_info* fi, fuse_pollhandle* ph) {
  auto& h = *reinterpret_cast<Handle*>(fi->fh);
  if (h.kind != NodeKind::partition && h.kind != NodeKind::follow) {
    if (ph != nullptr) fuse_pollhandle_destroy(ph);
    fuse_reply_poll(req, POLLIN | POLLRDNORM);
    return;
  }
  if (stale_ || gone(h)) {
    if (ph != nullptr) fuse_pollhandle_destroy(ph);
    fuse_reply_err(req, EIO);
    return;
  }
  Slot& slot = *slots_[h.index];
  if (ph != nullptr) {
    // Store the handle before looking at the data, so a change the watcher
    // sees after our look finds the handle and wakes it.
    std::lock_guard lock(slot.poll_mutex);
    if (h.poll != nullptr) fuse_pollhandle_destroy(h.poll);
    h.poll = ph;
    slot.pollers.insert(&h);
  }
  if (ph != nullptr) changes_->kick();  // a waiter: poll peers quickly again
  unsigned revents = 0;
  if (h.kind == NodeKind::follow) {
    if (follow_has_data(h)) revents |= POLLIN | POLLRDNORM;
  } else {
    auto s = region_->snapshot(slot.info().id);
    if (!s) {
      fuse_reply_err(req, errno_of(s.error()));
      return;
    }
    std::lock_guard lock(h.mutex);
    // Reads through the page cache reach us only for what the kernel lacks:
    // what any open file fetched counts as read.
    uint64_t read_to = h.position + h.shift;  // a ring's descriptor may read ahead of its offset
    if (h.cached) read_to = std::max(read_to, slot.fetched_end.load(std::memory_order_relaxed));
    if (s->length > read_to || s->generation != h.generation) revents |= POLLIN | POLLRDNORM;
    if (h.writable && (slot.info().ring || s->length < slot.info().capacity)) revents |= POLLOUT | POLLWRNORM;
  }
  fuse_reply_poll(req, revents);
}

// ---------------------------------------------------------------------------
// The follow view

bool Filesystem::follow_has_data(Handle& h) const {
  auto s = region_->snapshot(slots_[h.index]->info().id);
  if (!s) return true;  // let the read report the error
  std::lock_guard lock(h.mutex);
  return h.eof_once || s->generation != h.generation || s->length > h.position;
}

bool Filesystem::try_serve_follow(fuse_req_t req, Handle& h, std::size_t size) {
  // The reply goes out only after h.mutex is released: once it is out, the
  // kernel may release the file and another thread free the handle.
  int error = 0;
  std::span<const std::byte> bytes;
  {
    std::lock_guard lock(h.mutex);
    if (stale_) {
      error = EIO;
    } else {
      const uint32_t id = slots_[h.index]->info().id;
      for (;;) {
        auto s = region_->snapshot(id);
        if (!s) {
          error = errno_of(s.error());
          break;
        }
        if (s->generation != h.generation) {
          // The partition was reset: follow its new contents from the start.
          h.generation = s->generation;
          h.position = 0;
        }
        if (h.position >= s->length) {
          if (!h.eof_once) return false;
          // The wait was interrupted by a signal: end of file, once.
          h.eof_once = false;
          break;
        }
        auto out = scratch(size);
        uint64_t generation = 0;
        auto n = region_->read(id, h.position, out, &generation);
        if (!n && n.error().code == Errc::overrun && s->retained_from > h.position) {
          // A ring lapped this reader (see read_ring in data_path.cpp): a
          // new one starts at the oldest retained byte, a lapped one is told
          // once (EPIPE) or, with -o overrun=skip, skips silently.
          const uint64_t lost = s->retained_from - h.position;
          h.position = s->retained_from;
          if (!h.read_once) continue;
          if (overrun_skip_) {
            slots_[h.index]->skipped.fetch_add(lost, std::memory_order_relaxed);
            continue;
          }
          error = EPIPE;
          break;
        }
        if (!n && n.error().code == Errc::overrun) continue;  // lapped after the snapshot: look again
        if (!n) {
          error = errno_of(n.error());
          break;
        }
        if (generation != h.generation) continue;  // a reset raced the stat
        h.read_once = true;
        h.position += *n;
        bytes = out.first(*n);
        break;
      }
    }
  }
  if (error != 0) {
    fuse_reply_err(req, error);
  } else {
    fuse_reply_buf(req, reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  return true;
}

// A parked request is answered by whoever takes it out of parked_: the
// watcher (data arrived), on_interrupt (EINTR), or stop/go_stale. The
// interrupt callback is registered before the entry becomes visible to the
// watcher, because the watcher's answer frees the request.
void Filesystem::follow_read(fuse_req_t req, Handle& h, std::size_t size) {
  if (gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  for (;;) {
    if (try_serve_follow(req, h, size)) return;
    {
      std::lock_guard lock(park_mutex_);
      parked_[req] = ParkedRead{&h, size, false, false};
    }
    // May call on_interrupt at once (already interrupted): it marks the entry.
    fuse_req_interrupt_func(req, &Filesystem::on_interrupt, this);
    std::unique_lock lock(park_mutex_);
    auto it = parked_.find(req);
    if (it->second.interrupted || stale_) {
      parked_.erase(it);
      lock.unlock();
      if (!stale_) mark_interrupted(h);
      fuse_reply_err(req, stale_ ? EIO : EINTR);
      return;
    }
    if (!follow_has_data(h)) {
      it->second.parked = true;
      lock.unlock();
      changes_->kick();  // a waiter: poll peers quickly again
      return;
    }
    parked_.erase(it);  // data arrived meanwhile: serve it ourselves
  }
}

// A signal interrupted a waiting follow read. On a pipe, Ctrl-C stops the
// writer too and the reader's next read sees end of file: less +F then shows
// (END) and q quits. The follow view does the same: the next read that would
// wait returns end of file, once; reads after it wait again.
void Filesystem::mark_interrupted(Handle& h) noexcept {
  std::lock_guard lock(h.mutex);
  h.eof_once = true;
}

void Filesystem::on_interrupt(fuse_req_t req, void* data) noexcept {
  auto* fs = static_cast<Filesystem*>(data);
  std::unique_lock lock(fs->park_mutex_);
  auto it = fs->parked_.find(req);
  if (it == fs->parked_.end()) return;  // already answered
  if (!it->second.parked) {
    it->second.interrupted = true;  // follow_read answers it
    return;
  }
  Handle* h = it->second.handle;
  fs->parked_.erase(it);
  lock.unlock();
  mark_interrupted(*h);
  fuse_reply_err(req, EINTR);
}

void Filesystem::fail_parked(int error, bool only_slot, uint32_t index) noexcept {
  std::vector<fuse_req_t> failed;
  {
    std::lock_guard lock(park_mutex_);
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (it->second.parked && (!only_slot || it->second.handle->index == index)) {
        failed.push_back(it->first);
        it = parked_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (fuse_req_t r : failed) fuse_reply_err(r, error);
}

// ---------------------------------------------------------------------------
// Watching peers

bool Filesystem::tick() {
  if (stale_) return false;
  // A backing file that shrank faults only where someone touches it, and
  // pages the kernel cached need no touch: ask the file itself now and then.
  constexpr auto kShrinkCheckEvery = std::chrono::milliseconds(100);
  if (const auto t = std::chrono::steady_clock::now(); t - last_shrink_check_ >= kShrinkCheckEvery) {
    last_shrink_check_ = t;
    region_->notice_shrink();
  }
  if (auto r = region_->check_format(); !r) {
    go_stale(r.error().message);
    return false;
  }
  bool table_changed = false;
  if (region_->table_may_change()) {
    {
      std::lock_guard lock(follow_mutex_);
      ++follows_started_;
    }
    table_changed = follow_table();
    {
      std::lock_guard lock(follow_mutex_);
      ++follows_finished_;
    }
    followed_.notify_all();
  }
  if (stale_) return false;
  // The kernel caches no attributes (zero timeouts). Cached pages are the
  // notifier's (see the page cache rule in data_path.cpp): at a peer's reset
  // the watcher hands it the new generation. The follow view's attributes
  // are refreshed while a peer's file grows, at most every kInvalEvery.
  constexpr auto kInvalEvery = std::chrono::milliseconds(1);
  bool peer_changed = false;
  bool reset_seen = false;
  bool notify = false;
  std::optional<std::chrono::steady_clock::time_point> now;
  for (auto& slot : slots_) {
    auto s = region_->snapshot(slot->info().id);
    if (!s) continue;
    const uint32_t index = slot->info().index;
    const bool own = index == self_index_;
    if (s->length != slot->seen_length || s->generation != slot->seen_generation) {
      const bool reset = s->generation != slot->seen_generation;
      reset_seen = reset_seen || reset;
      slot->seen_length = s->length;
      slot->seen_generation = s->generation;
      // Our own appends are not news: own_partition_changed() woke their
      // waiters already. They do not keep the watcher polling fast.
      if (!own) peer_changed = true;
      if (own && reset) changes_->committed();  // peers following us see the reset
      partition_changed(*slot);
      if (!own || reset) slot->inval_pending = true;
      if (reset) slot->last_inval = {};
      // The file grew past a short last page the kernel may hold (or map):
      // the notifier drops it now (data_path.cpp, the page cache rule).
      {
        std::lock_guard lock(slot->tail_mutex);
        if (slot->short_low < s->length) notify = true;
      }
    }
    // A new generation: lookups from now on hand out a new node (see
    // inodes.cpp); the notifier drops every page the kernel may hold of the
    // old one, then lets the cache follow (reads of the new one are refused
    // until then).
    if (s->generation != slot->requested_generation) {
      slot->requested_generation = s->generation;
      slot->epoch.fetch_add(1, std::memory_order_acq_rel);
      {
        std::lock_guard lock(slot->cache_mutex);
        slot->pending_generation = s->generation;
        slot->generation_due = true;
      }
      notify = true;
    }
    if (slot->inval_pending && fuse_ != nullptr) {
      if (!now) now = std::chrono::steady_clock::now();
      if (*now - slot->last_inval >= kInvalEvery) {
        slot->inval_pending = false;
        slot->last_inval = *now;
        // Attributes only (offset -1): this waits for no page.
        if (slot->follow_lookups.load(std::memory_order_relaxed) > 0) {
          fuse_lowlevel_notify_inval_inode(fuse_, follow_ino(index), -1, 0);
        }
      }
    }
  }
  if (notify) notify_due();
  if (self_index_ != kNoPartition && !lost_claim_logged_.load(std::memory_order_relaxed)) {
    std::shared_lock lock(writer_mutex_);
    if (writer_ && !writer_->owns() && !lost_claim_logged_.exchange(true)) {
      spdlog::error("partition {} was taken over by another writer; writes now fail with EIO", *self_id_);
    }
  }
  // Fast polling is for waiters (poll handles, parked follow reads): a plain
  // read or stat asks the region itself and is never stale. Without waiters
  // the watcher backs off even while peers write, so it does not take CPU
  // from them; a new waiter kicks it back to the fast bound. A reset keeps
  // it quick a while; pending invalidations ride on the slower ticks.
  return ((peer_changed || pending_invalidation()) && has_waiters()) || reset_seen || table_changed;
}

bool Filesystem::follow_table() {
  auto change = region_->refresh_table();
  if (!change) {
    if (change.error().message != last_table_error_) {
      last_table_error_ = change.error().message;
      spdlog::warn("{}", last_table_error_);
    }
    return false;
  }
  last_table_error_.clear();
  if (!change->changed) return false;
  std::vector<const PartitionInfo*> now(slots_.size(), nullptr);
  for (const PartitionInfo& p : region_->partitions()) {
    if (p.index < now.size()) now[p.index] = &p;
  }
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = *slots_[i];
    const PartitionInfo& before = slot.info();
    const PartitionInfo* after = now[i];
    if (after != nullptr && slot.present() && same_partition(before, *after)) {
      slot.row.store(after, std::memory_order_release);  // the same partition, in the newer table
      continue;
    }
    if (after == nullptr && !slot.present()) continue;
    if (slot.present()) {
      spdlog::info("{} left the partition table", slot.name());
      if (i == self_index_) {
        go_stale(region_->path() + ": this peer's partition " + std::to_string(before.id) +
                 " was removed from the partition table");
        return true;
      }
    }
    // A new partition in the slot is another file: new lookups get new nodes
    // (inodes.cpp), and descriptors of the old one fail with EIO (gone()).
    slot.epoch.fetch_add(1, std::memory_order_acq_rel);
    slot.row.store(after != nullptr ? after : &slot.absent, std::memory_order_release);
    std::vector<fuse_req_t> orphans;  // follow reads parked on the old partition
    {
      std::lock_guard lock(park_mutex_);
      for (auto it = parked_.begin(); it != parked_.end();) {
        if (it->second.parked && it->second.handle->index == i && gone(*it->second.handle)) {
          orphans.push_back(it->first);
          it = parked_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (fuse_req_t r : orphans) fuse_reply_err(r, EIO);
    wake_pollers(slot);
    inval_partition(slot, 0, 0);
    uint64_t length = 0;
    uint64_t generation = 0;
    if (after != nullptr) {
      if (auto s = region_->snapshot(after->id)) {
        length = s->length;
        generation = s->generation;
      }
      spdlog::info("{} joined the partition table ({}{})", slot.name(), format_size(after->capacity),
                   after->ring ? ", a ring" : "");
    }
    slot.seen_length = length;
    slot.seen_generation = generation;
    slot.inval_pending = false;
    slot.requested_generation = generation;
    {
      std::lock_guard lock(slot.cache_mutex);
      slot.cache_generation = generation;
      slot.pending_generation = generation;
      slot.generation_due = false;
      slot.fetched_end.store(0, std::memory_order_relaxed);
    }
    slot.cache_moved.notify_all();
  }
  return true;
}

void Filesystem::catch_up_table() {
  if (stale_ || !region_->table_moved()) return;
  // Bounded: the watcher may be held up (dropping pages the kernel waits
  // for a read to fill, in a single-threaded mount); the answer then shows
  // the table as it was, as the next fallback look would have (about 1 s).
  constexpr auto kCatchUpBound = std::chrono::milliseconds(1000);
  std::unique_lock lock(follow_mutex_);
  const uint64_t wanted = follows_started_ + 1;
  changes_->kick();
  followed_.wait_for(lock, kCatchUpBound, [&] { return follows_finished_ >= wanted || stale_; });
}

bool Filesystem::pending_invalidation() const noexcept {
  for (const auto& slot : slots_) {
    if (slot->inval_pending) return true;
  }
  return false;
}

uint64_t Filesystem::waited_for() {
  uint64_t mask = 0;
  {
    std::lock_guard lock(park_mutex_);
    for (const auto& [req, parked] : parked_) mask |= uint64_t{1} << (slots_[parked.handle->index]->info().id % 64);
  }
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->poll_mutex);
    if (!slot->pollers.empty()) mask |= uint64_t{1} << (slot->info().id % 64);
  }
  return mask;
}

bool Filesystem::has_waiters() {
  {
    std::lock_guard lock(park_mutex_);
    if (!parked_.empty()) return true;
  }
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->poll_mutex);
    if (!slot->pollers.empty()) return true;
  }
  return false;
}

void Filesystem::partition_changed(Slot& slot) {
  // Waiters first: they are what the latency is about.
  wake_pollers(slot);
  answer_parked(slot.info().index);
}

void Filesystem::answer_parked(uint32_t index) {
  std::vector<std::pair<fuse_req_t, ParkedRead>> ready;
  {
    std::lock_guard lock(park_mutex_);
    if (parked_.empty()) return;
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (it->second.parked && it->second.handle->index == index) {
        ready.emplace_back(*it);
        it = parked_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& [req, parked] : ready) {
    try {
      follow_read(req, *parked.handle, parked.size);  // serves, or parks again
    } catch (...) {
      reply_exception(req);
    }
  }
}

// After the commit: a waiter that registered before it is found here; one
// that registers after it sees the new length itself (both sides take the
// same mutex, which orders them).
void Filesystem::own_partition_changed() noexcept {
  if (self_index_ == kNoPartition) return;
  Slot& slot = *slots_[self_index_];
  try {
    partition_changed(slot);
  } catch (const std::exception& e) {
    spdlog::error("waking readers of the own partition: {}", e.what());
  } catch (...) {
    spdlog::error("waking readers of the own partition: unknown exception");
  }
}

void Filesystem::wake_pollers(Slot& slot) noexcept {
  std::lock_guard lock(slot.poll_mutex);
  if (slot.pollers.empty()) return;
  for (Handle* h : slot.pollers) {
    if (h->poll == nullptr) continue;
    fuse_lowlevel_notify_poll(h->poll);
    fuse_pollhandle_destroy(h->poll);
    h->poll = nullptr;
  }
  slot.pollers.clear();
}

void Filesystem::go_stale(const std::string& why) {
  stale_ = true;
  spdlog::error("{}; no longer serving it: every access fails with EIO until unmounted", why);
  fail_parked(EIO, false, 0);
  for (auto& slot : slots_) {
    wake_pollers(*slot);
    // What the kernel cached is no longer ours to vouch for: from now on
    // every read reaches us and fails.
    inval_partition(*slot, 0, 0);
  }
  // Our claim lives in the old format: stop heartbeating into the new one.
  std::unique_lock lock(writer_mutex_);
  writer_.reset();
}

}  // namespace ivshmfs::fs
