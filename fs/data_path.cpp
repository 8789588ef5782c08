// SPDX-License-Identifier: MIT
// The data path: open, read, write (honest appends), truncate/reset and
// release of partition files, and the page-cache bookkeeping for them.
#include "fs_internal.hpp"

#include <fcntl.h>

#include <cstring>
#include <thread>

#include "status.hpp"

namespace ivshmfs::fs {

using namespace detail;

// The page cache rule. Partition files opened for reading go through the
// kernel's page cache. Committed bytes never change within a generation, so
// a cached page is right until its partition is reset, with one exception
// handled below (the last, partial page). Every page the kernel may hold of a
// file was read from generation slot.cache_generation:
//  - a read whose bytes are of another generation is refused (ESTALE), never
//    cached next to pages of the old one;
//  - the watcher, on seeing a new generation, hands it to the notifier,
//    which drops every cached page of the file and then moves
//    cache_generation on;
//  - open and getattr (which hold no page of the file) wait for that, a
//    bounded time, so stat-then-read and reopen-then-read see the new
//    contents at once; reads in flight across a reset get ESTALE.
// The last page: a cached read answered short leaves a page whose bytes past
// the end are zeros, and the kernel takes zeros below the size it knows for
// data. With FUSE_CAP_EXPLICIT_INVAL_DATA the kernel keeps its pages when a
// size grows (an append changes no cached byte), so the daemon keeps this
// rule itself: no reply shows the kernel a size past a short page that may
// be cached. A short page is dropped (by the notifier) once the file has
// grown past its end, and not before: while the file ends where the page
// does, its zeros lie past the size the kernel knows and the page is right.
// Dropping it at once, as this did, made every cached read of a file with a
// partial last page race its own drop: the reader waits for the page lock
// its read holds, the notifier (woken with the reply) queues for the same
// lock and, being exclusive, is handed it first, drops the page, and the
// reader finds it gone and reads again, whose short reply wakes the notifier
// again. On one CPU (a guest) each cat of a static file took dozens of
// reads, and nothing bounded the rounds. The watcher wakes the notifier when
// it sees a file grow past a short page (so that a mapping shows appends).
// An attribute reply (getattr, lookup) shows the committed length once no
// short page below it is cached (it wakes the notifier for one that is) and
// no read that began when the file was shorter is in flight (their replies
// could end below it). It waits for those a bounded time and otherwise
// shows the largest size that is safe: an attribute reply never waits for
// the kernel or for a read that has no thread yet. An own append through a direct-I/O writer (the kernel
// raises its size itself) drops the old last page before write() returns.
//
// Deadlocks this avoids: dropping pages (fuse_lowlevel_notify_inval_inode)
// waits for the reads of those pages in flight, which worker threads answer.
// So no worker drops pages for the rule while others wait for it, and no lock
// a read takes is held while pages are dropped.
bool Filesystem::may_cache(Node node) const noexcept {
  if (!page_cache_ || node.kind != NodeKind::partition) return false;
  // A ring's bytes change without a reset: never cached.
  if (slots_[node.index]->info().ring) return false;
  // An own append drops the file's last page inside the write request, which
  // waits for reads other threads serve: not with a single thread.
  return !single_thread_;
}

bool Filesystem::wait_cache_current(Slot& slot, uint64_t generation) {
  using clock = std::chrono::steady_clock;
  std::unique_lock lock(slot.cache_mutex);
  if (slot.cache_generation != generation) {
    lock.unlock();
    changes_->kick();
    lock.lock();
    // Bounded: the notifier normally answers within a tick; should it be
    // held up, the caller goes on (its reads are refused until it answered).
    if (!slot.cache_moved.wait_for(lock, std::chrono::milliseconds(500),
                                   [&] { return slot.cache_generation == generation; })) {
      return false;
    }
  }
  const auto ready_at = slot.cache_ready_at;
  lock.unlock();
  if (clock::now() < ready_at) std::this_thread::sleep_until(ready_at);
  return true;
}

// A thread asks for the attributes of a file (stat, fstat, open's lookup, a
// read() past the size the kernel knows): a reset the kernel did not know
// yet is handled first, so that stat-then-read sees the new contents.
void Filesystem::sync_cache(Node node) {
  if (stale_ || !may_cache(node)) return;
  Slot& slot = *slots_[node.index];
  if (auto s = region_->snapshot(slot.info().id)) wait_cache_current(slot, s->generation);
}

// The reads in flight this waits for have a worker thread already (they are
// registered inside read_partition) and take no lock while they run; the
// notifier's drops may wait for reads that have none yet, hence the bound:
// when every worker waits here, the replies go out with the safe size and
// the workers come free for those reads. Returns the safe size (<= length).
uint64_t Filesystem::settle_tail(Slot& slot, uint64_t length, bool shows_size) noexcept {
  using clock = std::chrono::steady_clock;
  constexpr auto kSettleBound = std::chrono::seconds(1);
  const auto deadline = clock::now() + kSettleBound;
  uint64_t shown = length;
  bool short_below = false;
  {
    std::lock_guard lock(slot.tail_mutex);
    short_below = slot.short_low < length;
  }
  // A short page below the size to show: the notifier drops it now that the
  // file is longer (it left it cached while the file ended there).
  if (short_below) notify_due();
  {
    std::unique_lock lock(slot.tail_mutex);
    for (;;) {
      const auto now = clock::now();
      const uint64_t safe = slot.tail_safe(now);
      if (safe >= length) break;
      if (now >= deadline) {
        spdlog::debug("{}: showing the kernel {} of {} bytes: a short last page is still being dropped", slot.name(),
                      safe, length);
        shown = safe;
        break;
      }
      auto wake = deadline;
      if (now < slot.settle_until && slot.settle_low < length) wake = std::min(wake, slot.settle_until);
      slot.tail_settled.wait_until(lock, wake);
    }
    // A new size in an attribute reply: the kernel zero-fills the cached
    // page holding it past it, then drops the file's pages itself. A larger
    // size must not land in between: none goes out within the grace. (Not
    // a drop of ours: it would make the kernel ignore this very reply.)
    if (shows_size && shown != slot.last_shown) {
      slot.last_shown = shown;
      if (shown % page_size() != 0) {
        const auto now = clock::now();
        slot.settle_low = now < slot.settle_until ? std::min(slot.settle_low, shown) : shown;
        slot.settle_until = now + Slot::kTailGrace;
      }
    }
  }
  return shown;
}

int Filesystem::attributes_for_reply(Node node, struct stat& out) {
  if (const int error = attributes(node, out); error != 0) return error;
  if (node.kind != NodeKind::partition || !may_cache(node)) return 0;
  const auto length = static_cast<uint64_t>(out.st_size);
  const uint64_t shown = settle_tail(*slots_[node.index], length, true);
  if (shown < length) {
    out.st_size = static_cast<off_t>(shown);
    out.st_blocks = static_cast<blkcnt_t>((shown + 511) / 512);
  }
  return 0;
}

// An own append through a direct-I/O writer: the kernel raises the size
// itself when the write returns, so the old last page must be gone first
// (settle_tail, as for an attribute reply). Should that take longer than
// its bound, the write drops the pages itself: it holds no lock here, and
// the kernel lets one write of a file run at a time.
void Filesystem::invalidate_own_tail(uint64_t new_length) noexcept {
  if (fuse_ == nullptr || self_index_ == kNoPartition) return;
  Slot& slot = *slots_[self_index_];
  const uint64_t safe = settle_tail(slot, new_length, false);
  if (safe >= new_length) return;
  inval_partition(slot, static_cast<off_t>(safe & ~(page_size() - 1)), 0);
}

// ---------------------------------------------------------------------------
// The notifier

void Filesystem::notify_due() noexcept {
  const std::shared_ptr<Notifier> control = notifier_;
  if (!control) return;
  {
    std::lock_guard lock(control->mutex);
    control->due = true;
  }
  control->wake.notify_one();
}

// Everything the notifier touches between two drops is checked against
// `stopping` first: at shutdown, a drop can wait for reads nobody answers
// any more until the connection is gone, and stop() does not wait for it.
void Filesystem::notifier_loop(const std::shared_ptr<Notifier>& control) noexcept {
  constexpr auto kCacheGrace = std::chrono::milliseconds(50);
  const auto stopping = [&] {
    std::lock_guard lock(control->mutex);
    return control->stopping;
  };
  for (;;) {
    {
      std::unique_lock lock(control->mutex);
      control->wake.wait(lock, [&] { return control->due || control->stopping; });
      if (control->stopping) break;
      control->due = false;
    }
    for (auto& slot : slots_) {
      // A new generation: every page of the old one goes, then the cache
      // follows.
      bool generation_due = false;
      uint64_t generation = 0;
      {
        std::lock_guard lock(slot->cache_mutex);
        generation_due = slot->generation_due;
        generation = slot->pending_generation;
        slot->generation_due = false;
      }
      if (generation_due) {
        const bool dropped = inval_partition(*slot, 0, 0) > 0;
        if (stopping()) break;
        {
          std::lock_guard lock(slot->cache_mutex);
          slot->cache_generation = generation;
          // The grace protects a read() in flight over the dropped pages;
          // when the kernel held none, there is nothing to protect.
          slot->cache_ready_at =
              std::chrono::steady_clock::now() + (dropped ? kCacheGrace : std::chrono::milliseconds(0));
          slot->fetched_end.store(0, std::memory_order_relaxed);
        }
        slot->cache_moved.notify_all();
      }
      // Short last pages, from the lowest end on, once the file has grown
      // past them (see the rule above: not before).
      uint64_t length = 0;
      try {
        if (auto snap = region_->snapshot(slot->info().id)) length = snap->length;
      } catch (...) {
        length = 0;  // out of memory for an error's message: the page stays until the next wake
      }
      uint64_t from = UINT64_MAX;
      {
        std::lock_guard lock(slot->tail_mutex);
        if (slot->short_low < length) {
          from = slot->short_low;
          slot->short_low = UINT64_MAX;
          slot->dropping_low = from;
        }
      }
      if (from == UINT64_MAX) continue;
      inval_partition(*slot, static_cast<off_t>(from & ~(page_size() - 1)), 0);
      if (stopping()) break;
      {
        std::lock_guard lock(slot->tail_mutex);
        slot->dropped(from, std::chrono::steady_clock::now());
      }
      slot->tail_settled.notify_all();
    }
  }
  control->done.store(true);
}

int Filesystem::reset_own_partition() {
  std::unique_lock lock(writer_mutex_);
  if (!writer_) return EIO;
  if (auto r = writer_->reset(); !r) return r.error().code == Errc::not_owner ? EIO : errno_of(r.error());
  lock.unlock();
  changes_->kick();
  return 0;
}

void Filesystem::setattr(fuse_req_t req, fuse_ino_t ino, const struct stat* attr, int to_set) {
  const Node node = decode(ino);
  if (node.kind == NodeKind::none) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  // Modes and owners come from the mount options; times are the region's.
  // Times are accepted and ignored, so `touch` and `cp -p` do not fail.
  if ((to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) != 0) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if ((to_set & FUSE_SET_ATTR_SIZE) != 0) {
    if (node.kind != NodeKind::partition) {
      fuse_reply_err(req, node.kind == NodeKind::root || node.kind == NodeKind::follow_dir ? EISDIR : EACCES);
      return;
    }
    if (node.index != self_index_) {
      fuse_reply_err(req, EACCES);
      return;
    }
    if (stale_) {
      fuse_reply_err(req, EIO);
      return;
    }
    // Partitions are append-only: truncating to zero is a reset, truncating
    // to the committed length changes nothing and succeeds (rsync --append
    // and others set the size they just wrote), any other size is refused.
    if (attr->st_size != 0) {
      auto s = region_->snapshot(slots_[node.index]->info().id);
      if (!s) {
        fuse_reply_err(req, errno_of(s.error()));
        return;
      }
      if (static_cast<uint64_t>(attr->st_size) != s->length) {
        fuse_reply_err(req, EPERM);
        return;
      }
    } else if (const int error = reset_own_partition(); error != 0) {
      fuse_reply_err(req, error);
      return;
    }
  }
  getattr(req, ino, nullptr);
}

void Filesystem::open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  const Node node = decode(ino);
  const bool wants_write = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC) != 0;
  switch (node.kind) {
    case NodeKind::none: fuse_reply_err(req, ENOENT); return;
    case NodeKind::root:
    case NodeKind::follow_dir: fuse_reply_err(req, EISDIR); return;
    case NodeKind::status:
    case NodeKind::follow:
      if (wants_write) {
        fuse_reply_err(req, EACCES);
        return;
      }
      break;
    case NodeKind::partition:
      // Ownership is ours to enforce, for root too: mode bits do not stop root.
      if (wants_write && node.index != self_index_) {
        fuse_reply_err(req, EACCES);
        return;
      }
      break;
  }
  if (stale_ && node.kind != NodeKind::status) {
    fuse_reply_err(req, EIO);
    return;
  }

  auto handle = std::make_unique<Handle>();
  handle->kind = node.kind;
  handle->index = node.index;
  if (node.kind == NodeKind::partition || node.kind == NodeKind::follow) {
    handle->row = &slots_[node.index]->info();
    if (handle->row->id == UINT32_MAX) {  // the partition left the table
      fuse_reply_err(req, ENOENT);
      return;
    }
  }
  handle->writable = node.kind == NodeKind::partition && (fi->flags & O_ACCMODE) != O_RDONLY;
  handle->append = (fi->flags & O_APPEND) != 0;
  if (node.kind == NodeKind::status) handle->text = format_status(*region_, self_id_, stale_, changes_->status());
  if (node.kind == NodeKind::partition || node.kind == NodeKind::follow) {
    if (node.kind == NodeKind::partition && (fi->flags & O_TRUNC) != 0) {
      if (const int error = reset_own_partition(); error != 0) {
        fuse_reply_err(req, error);
        return;
      }
    }
    auto s = region_->snapshot(slots_[node.index]->info().id);
    if (!s) {
      fuse_reply_err(req, errno_of(s.error()));
      return;
    }
    handle->generation = s->generation;
  }
  // Reading opens of partition files use the kernel's page cache (and its
  // readahead, and make mmap possible): committed bytes never change within
  // a generation, so cached pages stay right until a reset, and the rule in
  // the comment above may_cache() keeps every cached page of one generation.
  // Writing opens, the follow view and .status bypass it: writes go straight
  // to the daemon, follow reads wait, .status is a snapshot.
  fi->direct_io = 1;
  fi->keep_cache = 0;
  if (!handle->writable && may_cache(node)) {
    // Pages cached before the backing file shrank would keep being served
    // from the kernel without a request reaching us: ask the file first.
    if (region_->notice_shrink()) {
      fuse_reply_err(req, errno_of(region_->loss_error()));
      return;
    }
    handle->cached = true;
    fi->direct_io = 0;
    if (node.index == self_index_) own_cached_.store(true, std::memory_order_relaxed);
    // The kernel keeps what it cached before when it is of the current
    // generation; otherwise it drops it at this open.
    fi->keep_cache = wait_cache_current(*slots_[node.index], handle->generation) ? 1 : 0;
  }
  // Follow reads use their own cursor: seeking means nothing there.
  fi->nonseekable = node.kind == NodeKind::follow ? 1 : 0;
  Handle* raw = handle.get();
  {
    std::lock_guard lock(handles_mutex_);
    handles_.emplace(raw, std::move(handle));
  }
  fi->fh = reinterpret_cast<uint64_t>(raw);
  if (fuse_reply_open(req, fi) != 0) {
    std::lock_guard lock(handles_mutex_);
    handles_.erase(raw);
  }
}

// A ring's file (docs/filesystem.md, "Ring partitions"): offsets count the
// bytes written since the reset. The first read of an open file that starts
// below the oldest retained byte starts there; a descriptor its writer lapped
// later fails one read with EPIPE (or, with -o overrun=skip, skips silently,
// counted), and goes on at the oldest retained byte: its reads then run
// `shift` bytes ahead of the kernel's file offset, until it seeks.
void Filesystem::read_ring(fuse_req_t req, Handle& h, std::size_t size, off_t off) {
  Slot& slot = *slots_[h.index];
  const uint32_t id = slot.info().id;
  const auto offset = static_cast<uint64_t>(std::max<off_t>(off, 0));
  auto out = scratch(size);
  int error = 0;
  std::size_t n = 0;
  {
    std::lock_guard lock(h.mutex);
    // A read where the last one ended continues the stream; any other offset
    // (a seek, or the first read) means what it says.
    if (!h.read_once || offset != h.position) h.shift = 0;
    for (int attempt = 0;; ++attempt) {
      const uint64_t stream = offset + h.shift;
      uint64_t generation = 0;
      auto got = region_->read(id, stream, out, &generation);
      if (got) {
        if (generation != h.generation && h.read_once) h.shift = 0;  // a reset: offsets start anew
        h.generation = generation;
        n = *got;
        break;
      }
      auto s = got.error().code == Errc::overrun && attempt < 1000 ? region_->snapshot(id)
                                                                   : Result<PartitionSnapshot>(got.error());
      if (!s) {
        error = errno_of(s.error());
        break;
      }
      if (s->retained_from <= stream) continue;  // the writer moved on meanwhile: look again
      const uint64_t lost = s->retained_from - stream;
      h.shift += lost;
      if (!h.read_once) continue;  // a new reader starts at the oldest retained byte
      if (overrun_skip_) {
        slot.skipped.fetch_add(lost, std::memory_order_relaxed);
        continue;
      }
      error = EPIPE;  // once: the read after it, at the same offset, goes on at the oldest byte
      spdlog::debug("{}: a reader at {} was lapped by {} bytes", slot.name(), stream, lost);
      break;
    }
    h.read_once = true;
    h.position = offset + n;
  }
  if (error != 0) {
    fuse_reply_err(req, error);
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(out.data()), n);
}

void Filesystem::read_partition(fuse_req_t req, Handle& h, std::size_t size, off_t off) {
  Slot& slot = *slots_[h.index];
  if (slot.info().ring) {
    read_ring(req, h, size, off);
    return;
  }
  const uint32_t id = slot.info().id;
  const auto offset = static_cast<uint64_t>(std::max<off_t>(off, 0));
  // What goes into the page cache must be of the generation the cache holds
  // (see may_cache()). A read that raced a reset the watcher has not yet
  // handled is refused: waiting here could deadlock (the kernel holds the
  // pages of this read locked, and dropping pages waits for their locks).
  const auto cache_refuses = [&](uint64_t generation, std::size_t got) {
    if (!h.cached) return false;
    // The kernel asks only for pages below the size it knows. A page wholly
    // past our end means it knows a size from before a reset: a short reply
    // would leave zero-filled pages it takes for data (it lowers its size
    // only when no attribute update crossed the reply). Refuse instead.
    bool refuse = got + page_size() <= size;
    if (!refuse) {
      std::lock_guard lock(slot.cache_mutex);
      refuse = slot.cache_generation != generation || std::chrono::steady_clock::now() < slot.cache_ready_at;
    }
    if (!refuse) return false;
    changes_->kick();
    spdlog::debug("read of {} at {} of {} refused: a reset the kernel may not know yet", size, offset, slot.name());
    fuse_reply_err(req, ESTALE);
    return true;
  };
  // A short reply through the cache: the kernel completes its last page with
  // zeros. Attribute replies know of this read from its start (with the
  // file's length then: a short reply ends at or past it), and of where a
  // short reply ended from just before the reply goes out (its pages stay
  // locked until the kernel took it, so the notifier's drop waits for
  // them); see settle_tail().
  struct InFlight {
    Filesystem& fs;
    Slot& slot;
    bool cached;
    uint64_t offset;
    std::size_t size;
    std::multiset<uint64_t>::iterator entry;
    bool ended = false;
    InFlight(Filesystem& f, Slot& s, bool through_cache, uint64_t o, std::size_t n)
        : fs(f), slot(s), cached(through_cache), offset(o), size(n) {
      if (!cached) return;
      const auto now = f.region_->snapshot(s.info().id);
      std::lock_guard lock(slot.tail_mutex);
      entry = slot.inflight_from.insert(now ? now->length : 0);
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
    InFlight(InFlight&&) = delete;
    InFlight& operator=(InFlight&&) = delete;
    void replying(std::size_t got) noexcept {
      if (!cached || ended) return;
      ended = true;
      const bool short_reply = got < size;
      {
        std::lock_guard lock(slot.tail_mutex);
        slot.inflight_from.erase(entry);
        if (short_reply) slot.short_low = std::min(slot.short_low, offset + got);
      }
      slot.tail_settled.notify_all();
      // A short reply wakes no one: its page stays cached until the file
      // grows past it (an attribute reply then asks for the drop).
    }
    ~InFlight() { replying(size); }
  } in_flight(*this, slot, h.cached, offset, size);
  if (h.index == self_index_ && !copy_own_reads_) {
    // Only this daemon resets its own partition, and a reset waits for this
    // lock: the bytes go to the kernel straight from the mapping.
    std::shared_lock lock(writer_mutex_);
    auto v = region_->view(id, offset, size);
    if (!v) {
      fuse_reply_err(req, errno_of(v.error()));
      return;
    }
    // A view ends where a fenced hole begins, and a short reply would mean
    // the end of the file: a short view goes the copying way below, which
    // reads around the hole.
    if (v->bytes.size() == size) {
      if (cache_refuses(v->generation, v->bytes.size())) return;
      if (h.cached) slot.note_fetched(offset + v->bytes.size());
      {
        std::lock_guard hl(h.mutex);
        h.position = offset + v->bytes.size();
        h.generation = v->generation;
      }
      in_flight.replying(v->bytes.size());
      fuse_reply_buf(req, reinterpret_cast<const char*>(v->bytes.data()), v->bytes.size());
      return;
    }
  }
  // A peer may reset its partition at any moment, and what we hand to the
  // kernel cannot be taken back: copy, check the generation, then reply.
  // (Also the own partition when the mapping cannot be pinned.)
  auto out = scratch(size);
  uint64_t generation = 0;
  auto n = region_->read(id, offset, out, &generation);
  if (!n) {
    fuse_reply_err(req, errno_of(n.error()));
    return;
  }
  if (cache_refuses(generation, *n)) return;
  if (h.cached) slot.note_fetched(offset + *n);
  {
    std::lock_guard hl(h.mutex);
    h.position = offset + *n;
    h.generation = generation;
  }
  in_flight.replying(*n);
  fuse_reply_buf(req, reinterpret_cast<const char*>(out.data()), *n);
}

void Filesystem::read(fuse_req_t req, std::size_t size, off_t off, fuse_file_info* fi) {
  auto& h = *reinterpret_cast<Handle*>(fi->fh);
  if (h.kind == NodeKind::status) {
    const auto offset = static_cast<std::size_t>(std::max<off_t>(off, 0));
    if (offset >= h.text.size()) {
      fuse_reply_buf(req, nullptr, 0);
      return;
    }
    // A copy of our own: the kernel may finish the read, and a RELEASE on
    // another thread free the handle, before writev has returned here.
    const std::string slice = h.text.substr(offset, size);
    fuse_reply_buf(req, slice.data(), slice.size());
    return;
  }
  // A partition removed from the table since the open: EIO, as after a new format.
  if (stale_ || gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (h.kind == NodeKind::follow) {
    follow_read(req, h, size);
    return;
  }
  read_partition(req, h, size, off);
}

void Filesystem::write_buf(fuse_req_t req, fuse_bufvec* in, off_t off, fuse_file_info* fi) {
  const auto& h = *reinterpret_cast<const Handle*>(fi->fh);
  if (!h.writable) {
    fuse_reply_err(req, EBADF);
    return;
  }
  if (stale_ || gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  const std::size_t size = fuse_buf_size(in);
  // The kernel sends the descriptor's current flags with every write (so an
  // O_APPEND set or cleared later with fcntl counts); they always hold the
  // access mode, so zero means a kernel that sent none: then the open's.
  const bool append_mode = fi->flags != 0 ? (fi->flags & O_APPEND) != 0 : h.append;
  spdlog::trace("write {} bytes at {}{}", size, off, append_mode ? " (O_APPEND)" : "");
  if (size == 0) {
    fuse_reply_write(req, 0);
    return;
  }
  std::shared_lock lock(writer_mutex_);
  if (!writer_) {
    fuse_reply_err(req, EIO);
    return;
  }
  // Under the append lock this write is committed whole (or, when the
  // partition fills, as much as fits) and never interleaves with another.
  std::unique_lock append(append_mutex_);
  if (!append_mode) {
    // Honest appends: a write lands where the program asked, or nowhere.
    // Only the end of the committed bytes can take new ones; a write that
    // seeks back to overwrite (or past the end, to leave a hole) is refused
    // with EPERM, as Linux refuses to modify an append-only (chattr +a) file,
    // so the program stops instead of believing it overwrote.
    auto s = region_->snapshot(writer_->id());
    if (!s) {
      append.unlock();
      lock.unlock();
      fuse_reply_err(req, errno_of(s.error()));
      return;
    }
    if (off < 0 || static_cast<uint64_t>(off) != s->length) {
      append.unlock();
      lock.unlock();
      spdlog::debug("write of {} bytes at offset {} refused: the partition ends at {}", size, off, s->length);
      fuse_reply_err(req, EPERM);
      return;
    }
  }
  // One copy: from the request (libfuse's buffer, or the pipe the kernel
  // spliced the writer's pages into) straight into the partition.
  // A read-only open of the own file used the page cache: its old last page
  // goes before this write returns.
  const bool drop_tail = own_cached_.load(std::memory_order_relaxed);
  uint64_t old_length = 0;
  if (drop_tail) {
    if (auto s = region_->snapshot(writer_->id())) old_length = s->length;
  }
  auto room = writer_->reserve(size);
  if (!room) {
    append.unlock();
    lock.unlock();
    const Errc code = room.error().code;
    if (code == Errc::not_owner && !lost_claim_logged_.exchange(true)) spdlog::error("{}", room.error().message);
    fuse_reply_err(req, code == Errc::not_owner || code == Errc::reformatted ? EIO : errno_of(room.error()));
    return;
  }
  if (room->bytes().size() < size) {
    // The room ends early: the partition is almost full, or a range fenced
    // off by a takeover lies ahead. Through a private copy, append() places
    // the write around the fenced range, still as one publish.
    room->commit(0);
    const std::span<std::byte> staged = scratch(size);
    fuse_bufvec bounce = FUSE_BUFVEC_INIT(size);
    bounce.buf[0].mem = staged.data();
    const ssize_t got = fuse_buf_copy(&bounce, in, static_cast<fuse_buf_copy_flags>(0));
    auto appended = got > 0 ? writer_->append(staged.first(static_cast<std::size_t>(got)))
                            : Result<std::size_t>(make_error(Errc::io_error, "short copy from the request"));
    append.unlock();
    lock.unlock();
    if (!appended) {
      const Errc code = appended.error().code;
      if (code == Errc::not_owner && !lost_claim_logged_.exchange(true)) spdlog::error("{}", appended.error().message);
      fuse_reply_err(req, got < 0                                                ? static_cast<int>(-got)
                          : code == Errc::not_owner || code == Errc::reformatted ? EIO
                                                                                 : errno_of(appended.error()));
      return;
    }
    if (drop_tail) invalidate_own_tail(old_length + *appended);
    changes_->committed();
    fuse_reply_write(req, *appended);
    own_partition_changed();
    return;
  }
  const std::span<std::byte> into = room->bytes();
  fuse_bufvec dst = FUSE_BUFVEC_INIT(into.size());
  dst.buf[0].mem = into.data();
  const ssize_t copied = fuse_buf_copy(&dst, in, static_cast<fuse_buf_copy_flags>(0));
  if (copied <= 0) {
    room->commit(0);
    append.unlock();
    lock.unlock();
    fuse_reply_err(req, copied < 0 ? static_cast<int>(-copied) : EIO);
    return;
  }
  const std::size_t n = room->commit(static_cast<std::size_t>(copied));
  append.unlock();
  lock.unlock();
  if (n == 0) {  // nothing was published: the mapping lost its backing, or the claim was taken over
    if (region_->mapping_lost()) {
      fuse_reply_err(req, errno_of(region_->loss_error()));
      return;
    }
    if (!lost_claim_logged_.exchange(true)) {
      spdlog::error("{}: partition {}: the claim was taken over during a write", region_->path(), self_id_.value_or(0));
    }
    fuse_reply_err(req, EIO);
    return;
  }
  if (drop_tail) invalidate_own_tail(old_length + n);
  // Peers waiting for this partition are rung before the writer is answered:
  // a ring is one system call, while the reply lets the writer run and can
  // keep this thread from the CPU (in a one-CPU guest, for a whole request).
  changes_->committed();
  fuse_reply_write(req, n);
  own_partition_changed();
}

void Filesystem::release(fuse_req_t req, fuse_file_info* fi) {
  auto* h = reinterpret_cast<Handle*>(fi->fh);
  if (h->kind == NodeKind::partition || h->kind == NodeKind::follow) {
    Slot& slot = *slots_[h->index];
    std::lock_guard lock(slot.poll_mutex);
    if (h->poll != nullptr) fuse_pollhandle_destroy(h->poll);
    h->poll = nullptr;
    slot.pollers.erase(h);
  }
  {
    // The kernel releases a file only when no read is pending on it; answer
    // any parked read anyway rather than keep a pointer to a freed handle.
    std::vector<fuse_req_t> orphans;
    {
      std::lock_guard lock(park_mutex_);
      for (auto it = parked_.begin(); it != parked_.end();) {
        if (it->second.handle == h && it->second.parked) {
          orphans.push_back(it->first);
          it = parked_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (fuse_req_t r : orphans) fuse_reply_err(r, EINTR);
  }
  {
    std::lock_guard lock(handles_mutex_);
    handles_.erase(h);
  }
  fuse_reply_err(req, 0);
}

}  // namespace ivshmfs::fs
