// SPDX-License-Identifier: MIT
// The data path: open, read, write (honest appends), truncate/reset and
// release of partition files, and the page-cache bookkeeping for them.
#include "fs_internal.hpp"

#include <fcntl.h>

#include <cstring>

#include "status.hpp"

namespace ivshmfs::fs {

using namespace detail;

int Filesystem::reset_own_partition() {
  std::unique_lock lock(writer_mutex_);
  if (!writer_) return EIO;
  if (auto r = writer_->reset(); !r) return r.error().code == Errc::not_owner ? EIO : errno_of(r.error());
  lock.unlock();
  watcher_.kick();
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
      auto s = region_->snapshot(slots_[node.index]->info.id);
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
  getattr(req, ino);
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
  handle->writable = node.kind == NodeKind::partition && (fi->flags & O_ACCMODE) != O_RDONLY;
  handle->append = (fi->flags & O_APPEND) != 0;
  if (node.kind == NodeKind::status) handle->text = format_status(*region_, self_id_, stale_);
  if (node.kind == NodeKind::partition || node.kind == NodeKind::follow) {
    if (node.kind == NodeKind::partition && (fi->flags & O_TRUNC) != 0) {
      if (const int error = reset_own_partition(); error != 0) {
        fuse_reply_err(req, error);
        return;
      }
    }
    auto s = region_->snapshot(slots_[node.index]->info.id);
    if (!s) {
      fuse_reply_err(req, errno_of(s.error()));
      return;
    }
    handle->generation = s->generation;
  }
  // The page cache would hide peers' appends: every read comes to us.
  fi->direct_io = 1;
  fi->keep_cache = 0;
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

void Filesystem::read_partition(fuse_req_t req, Handle& h, std::size_t size, off_t off) {
  const uint32_t id = slots_[h.index]->info.id;
  const auto offset = static_cast<uint64_t>(std::max<off_t>(off, 0));
  if (h.index == self_index_ && !copy_own_reads_) {
    // Only this daemon resets its own partition, and a reset waits for this
    // lock: the bytes go to the kernel straight from the mapping.
    std::shared_lock lock(writer_mutex_);
    auto v = region_->view(id, offset, size);
    if (!v) {
      fuse_reply_err(req, errno_of(v.error()));
      return;
    }
    {
      std::lock_guard hl(h.mutex);
      h.position = offset + v->bytes.size();
      h.generation = v->generation;
    }
    fuse_reply_buf(req, reinterpret_cast<const char*>(v->bytes.data()), v->bytes.size());
    return;
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
  {
    std::lock_guard hl(h.mutex);
    h.position = offset + *n;
    h.generation = generation;
  }
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
  if (stale_) {
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
  if (stale_) {
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
  auto room = writer_->reserve(size);
  if (!room) {
    append.unlock();
    lock.unlock();
    const Errc code = room.error().code;
    if (code == Errc::not_owner && !lost_claim_logged_.exchange(true)) spdlog::error("{}", room.error().message);
    fuse_reply_err(req, code == Errc::not_owner || code == Errc::reformatted ? EIO : errno_of(room.error()));
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
