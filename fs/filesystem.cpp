// SPDX-License-Identifier: MIT
#include "filesystem.hpp"

#include <poll.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <new>
#include <span>
#include <string_view>
#include <system_error>

#include <spdlog/spdlog.h>

#include "status.hpp"

namespace ivshmfs::fs {

namespace {

constexpr fuse_ino_t kStatusIno = 2;
constexpr fuse_ino_t kFollowDirIno = 3;
constexpr fuse_ino_t kPartitionIno0 = 16;
constexpr fuse_ino_t kFollowIno0 = kPartitionIno0 + IVSHMFS_MAX_PARTITIONS;

constexpr const char* kStatusName = ".status";
constexpr const char* kFollowName = "follow";

// The largest request the kernel sends us (FUSE_MAX_MAX_PAGES pages); libfuse
// turns conn->max_write into the kernel's max_pages, which bounds reads too.
constexpr unsigned kMaxRequest = 1U << 20;
// What stat reports as the preferred I/O size, so cat and cp use big requests.
constexpr blksize_t kPreferredIo = 1 << 20;

timespec to_timespec(uint64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000ULL), static_cast<long>(ns % 1'000'000'000ULL)};
}

int errno_of(const Error& e) noexcept { return -e.negative_errno(); }

// A per-thread buffer for reads that must be copied out of the mapping first.
std::span<std::byte> scratch(std::size_t size) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < size) buffer.resize(std::max<std::size_t>(size, std::size_t{64} * 1024));
  return {buffer.data(), size};
}

// Exceptions become an errno here, at the libfuse boundary.
void reply_exception(fuse_req_t req) noexcept {
  int error = EIO;
  try {
    throw;
  } catch (const std::bad_alloc&) {
    error = ENOMEM;
  } catch (const std::system_error& e) {
    error = e.code().value() != 0 ? e.code().value() : EIO;
    spdlog::error("{}", e.what());
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
  } catch (...) {
    spdlog::error("unknown exception in a FUSE operation");
  }
  fuse_reply_err(req, error);
}

Filesystem& self(fuse_req_t req) noexcept { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }

}  // namespace

// One open file.
struct Filesystem::Handle {
  NodeKind kind = NodeKind::none;
  uint32_t index = 0;
  bool writable = false;
  std::string text;  // .status: the snapshot taken at open
  std::mutex mutex;  // guards position and generation
  // Partition files: the end of the last read (poll reports POLLIN past it).
  // Follow files: the cursor, independent of the kernel's file offset.
  uint64_t position = 0;
  uint64_t generation = 0;
  fuse_pollhandle* poll = nullptr;  // guarded by the slot's poll_mutex
};

// One partition of the region.
struct Filesystem::Slot {
  PartitionInfo info;
  std::string name;
  std::atomic<uint64_t> lookups{0};
  std::atomic<uint64_t> follow_lookups{0};
  // The watcher's last view; only the watcher thread touches these.
  uint64_t seen_length = 0;
  uint64_t seen_generation = 0;
  bool inval_pending = false;  // the kernel's view of the inode is due a refresh
  std::chrono::steady_clock::time_point last_inval{};
  std::mutex poll_mutex;
  std::unordered_set<Handle*> pollers;  // handles holding a poll handle
};

Filesystem::Filesystem(std::shared_ptr<Region> region, std::unique_ptr<PartitionWriter> writer, const Options& options)
    : region_(std::move(region)),
      ownership_(options.ownership),
      writer_(std::move(writer)),
      watcher_(options.poll, [this] { return tick(); }) {
  if (writer_) self_id_ = writer_->id();
  // The kernel pins the pages of a reply: a mapping without struct pages (a
  // PCI resource file, or a /dev/ivshmN whose driver says so, see driver.md)
  // fails there with EFAULT, so such reads go through a private buffer.
  const Backend& backend = region_->backend();
  copy_own_reads_ =
      backend.kind() == BackendKind::pci_resource || (backend.device_info() && !backend.device_info()->struct_pages);
  for (const PartitionInfo& p : region_->partitions()) {
    auto slot = std::make_unique<Slot>();
    slot->info = p;
    slot->name = partition_file_name(p.id);
    if (auto s = region_->snapshot(p.id)) {
      slot->seen_length = s->length;
      slot->seen_generation = s->generation;
    }
    if (self_id_ && p.id == *self_id_) self_index_ = p.index;
    index_by_name_.emplace(slot->name, static_cast<uint32_t>(slots_.size()));
    slots_.push_back(std::move(slot));
  }
}

Filesystem::~Filesystem() {
  stop();
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->poll_mutex);
    for (Handle* h : slot->pollers) {
      if (h->poll != nullptr) fuse_pollhandle_destroy(h->poll);
      h->poll = nullptr;
    }
    slot->pollers.clear();
  }
}

void Filesystem::start(fuse_session* fuse) {
  fuse_ = fuse;
  watcher_.start();
}

void Filesystem::stop() noexcept {
  watcher_.stop();
  fail_parked(EINTR, false, 0);
}

// ---------------------------------------------------------------------------
// Inodes

Filesystem::Node Filesystem::decode(fuse_ino_t ino) const noexcept {
  const auto count = static_cast<fuse_ino_t>(slots_.size());
  if (ino == FUSE_ROOT_ID) return {NodeKind::root, 0};
  if (ino == kStatusIno) return {NodeKind::status, 0};
  if (ino == kFollowDirIno) return {NodeKind::follow_dir, 0};
  if (ino >= kPartitionIno0 && ino < kPartitionIno0 + count) {
    return {NodeKind::partition, static_cast<uint32_t>(ino - kPartitionIno0)};
  }
  if (ino >= kFollowIno0 && ino < kFollowIno0 + count) {
    return {NodeKind::follow, static_cast<uint32_t>(ino - kFollowIno0)};
  }
  return {};
}

fuse_ino_t Filesystem::partition_ino(uint32_t index) const noexcept { return kPartitionIno0 + index; }
fuse_ino_t Filesystem::follow_ino(uint32_t index) const noexcept { return kFollowIno0 + index; }

int Filesystem::attributes(Node node, struct stat& st) const {
  st = {};
  st.st_uid = ownership_.uid;
  st.st_gid = ownership_.gid;
  st.st_blksize = kPreferredIo;
  const timespec formatted = to_timespec(region_->info().format_time_ns);
  st.st_atim = st.st_mtim = st.st_ctim = formatted;
  switch (node.kind) {
    case NodeKind::root:
      st.st_ino = FUSE_ROOT_ID;
      st.st_mode = S_IFDIR | (0555 & ~ownership_.umask);
      st.st_nlink = 3;
      return 0;
    case NodeKind::follow_dir:
      st.st_ino = kFollowDirIno;
      st.st_mode = S_IFDIR | (0555 & ~ownership_.umask);
      st.st_nlink = 2;
      return 0;
    case NodeKind::status:
      st.st_ino = kStatusIno;
      st.st_mode = S_IFREG | (0444 & ~ownership_.umask);
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(format_status(*region_, self_id_, stale_).size());
      st.st_mtim = st.st_ctim = to_timespec(wall_clock_ns());
      return 0;
    case NodeKind::partition:
    case NodeKind::follow: {
      if (stale_) return EIO;
      const Slot& slot = *slots_[node.index];
      auto s = region_->snapshot(slot.info.id);
      if (!s) return errno_of(s.error());
      const bool own = node.kind == NodeKind::partition && node.index == self_index_;
      st.st_ino = node.kind == NodeKind::partition ? partition_ino(node.index) : follow_ino(node.index);
      st.st_mode = S_IFREG | ((own ? 0666 : 0444) & ~ownership_.umask);
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(s->length);
      st.st_blocks = static_cast<blkcnt_t>((s->length + 511) / 512);
      if (s->last_write_ns != 0) st.st_mtim = st.st_ctim = to_timespec(s->last_write_ns);
      st.st_atim = st.st_mtim;
      return 0;
    }
    case NodeKind::none: break;
  }
  return ENOENT;
}

void Filesystem::reply_entry(fuse_req_t req, fuse_ino_t ino, Node node) {
  fuse_entry_param e{};
  if (const int error = attributes(node, e.attr); error != 0) {
    fuse_reply_err(req, error);
    return;
  }
  e.ino = ino;
  // Zero timeouts: a peer's append must show in the very next stat.
  e.attr_timeout = 0.0;
  e.entry_timeout = 0.0;
  if (node.kind == NodeKind::partition) slots_[node.index]->lookups.fetch_add(1, std::memory_order_relaxed);
  if (node.kind == NodeKind::follow) slots_[node.index]->follow_lookups.fetch_add(1, std::memory_order_relaxed);
  if (fuse_reply_entry(req, &e) != 0) {
    // The kernel did not take the reference (e.g. the request was interrupted).
    if (node.kind == NodeKind::partition) slots_[node.index]->lookups.fetch_sub(1, std::memory_order_relaxed);
    if (node.kind == NodeKind::follow) slots_[node.index]->follow_lookups.fetch_sub(1, std::memory_order_relaxed);
  }
}

// ---------------------------------------------------------------------------
// Operations

void Filesystem::init(fuse_conn_info* conn) {
  conn->max_write = kMaxRequest;
  if ((conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) != 0) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // A write bigger than max_write arrives in pieces; asynchronous direct I/O
  // would send them in parallel and let them land out of order.
  conn->want &= ~static_cast<unsigned>(FUSE_CAP_ASYNC_DIO | FUSE_CAP_WRITEBACK_CACHE);
  conn->want &= ~static_cast<unsigned>(FUSE_CAP_SPLICE_READ);
  spdlog::debug("FUSE protocol {}.{}, max_write {}, capable {:#x}, want {:#x}", conn->proto_major, conn->proto_minor,
                conn->max_write, conn->capable, conn->want);
}

void Filesystem::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  const Node dir = decode(parent);
  const std::string_view n = name;
  if (dir.kind == NodeKind::root) {
    if (n == kStatusName) return reply_entry(req, kStatusIno, {NodeKind::status, 0});
    if (n == kFollowName) return reply_entry(req, kFollowDirIno, {NodeKind::follow_dir, 0});
  }
  if (dir.kind == NodeKind::root || dir.kind == NodeKind::follow_dir) {
    if (auto it = index_by_name_.find(std::string(n)); it != index_by_name_.end()) {
      if (dir.kind == NodeKind::root)
        return reply_entry(req, partition_ino(it->second), {NodeKind::partition, it->second});
      return reply_entry(req, follow_ino(it->second), {NodeKind::follow, it->second});
    }
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_reply_err(req, dir.kind == NodeKind::none ? ENOENT : ENOTDIR);
}

void Filesystem::forget(fuse_ino_t ino, uint64_t nlookup) noexcept {
  const Node node = decode(ino);
  if (node.kind == NodeKind::partition) slots_[node.index]->lookups.fetch_sub(nlookup, std::memory_order_relaxed);
  if (node.kind == NodeKind::follow) slots_[node.index]->follow_lookups.fetch_sub(nlookup, std::memory_order_relaxed);
}

void Filesystem::getattr(fuse_req_t req, fuse_ino_t ino) {
  struct stat st {};
  if (const int error = attributes(decode(ino), st); error != 0) {
    fuse_reply_err(req, error);
    return;
  }
  fuse_reply_attr(req, &st, 0.0);
}

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
    // Partitions are append-only: only truncating to zero (a reset) exists.
    if (attr->st_size != 0) {
      fuse_reply_err(req, EPERM);
      return;
    }
    if (stale_) {
      fuse_reply_err(req, EIO);
      return;
    }
    if (const int error = reset_own_partition(); error != 0) {
      fuse_reply_err(req, error);
      return;
    }
  }
  getattr(req, ino);
}

void Filesystem::readdir(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off) {
  struct Entry {
    std::string name;
    fuse_ino_t ino;
    mode_t type;
  };
  const Node node = decode(ino);
  std::vector<Entry> entries;
  if (node.kind == NodeKind::root) {
    entries.push_back({".", FUSE_ROOT_ID, S_IFDIR});
    entries.push_back({"..", FUSE_ROOT_ID, S_IFDIR});
    entries.push_back({kStatusName, kStatusIno, S_IFREG});
    entries.push_back({kFollowName, kFollowDirIno, S_IFDIR});
    for (uint32_t i = 0; i < slots_.size(); ++i) entries.push_back({slots_[i]->name, partition_ino(i), S_IFREG});
  } else if (node.kind == NodeKind::follow_dir) {
    entries.push_back({".", kFollowDirIno, S_IFDIR});
    entries.push_back({"..", FUSE_ROOT_ID, S_IFDIR});
    for (uint32_t i = 0; i < slots_.size(); ++i) entries.push_back({slots_[i]->name, follow_ino(i), S_IFREG});
  } else {
    fuse_reply_err(req, node.kind == NodeKind::none ? ENOENT : ENOTDIR);
    return;
  }
  std::vector<char> buf(size);
  std::size_t used = 0;
  for (auto i = static_cast<std::size_t>(std::max<off_t>(off, 0)); i < entries.size(); ++i) {
    struct stat st {};
    st.st_ino = entries[i].ino;
    st.st_mode = entries[i].type;
    const std::size_t need =
        fuse_add_direntry(req, buf.data() + used, size - used, entries[i].name.c_str(), &st, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
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

void Filesystem::write_buf(fuse_req_t req, fuse_bufvec* in, fuse_file_info* fi) {
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
  if (size == 0) {
    fuse_reply_write(req, 0);
    return;
  }
  std::shared_lock lock(writer_mutex_);
  if (!writer_) {
    fuse_reply_err(req, EIO);
    return;
  }
  // The file offset is ignored: every write appends at the committed length.
  // Under the append lock this write is committed whole (or, when the
  // partition fills, as much as fits) and never interleaves with another.
  // One copy: from the request (libfuse's buffer, or the pipe the kernel
  // spliced the writer's pages into) straight into the partition.
  std::unique_lock append(append_mutex_);
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
  if (n == 0) {  // the commit was refused: the mapping lost its backing
    fuse_reply_err(req, errno_of(region_->backend().loss_error()));
    return;
  }
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

void Filesystem::statfs(fuse_req_t req) {
  struct statvfs st {};
  st.f_bsize = IVSHMFS_PAGE_SIZE;
  st.f_frsize = IVSHMFS_PAGE_SIZE;
  st.f_namemax = 255;
  st.f_files = slots_.size() + 3;
  if (!stale_ && self_index_ != kNoPartition) {
    // df shows the own partition: what this peer can still write.
    const PartitionInfo& p = slots_[self_index_]->info;
    if (auto s = region_->snapshot(p.id)) {
      st.f_blocks = p.capacity / IVSHMFS_PAGE_SIZE;
      st.f_bfree = st.f_bavail = (p.capacity - s->length) / IVSHMFS_PAGE_SIZE;
    }
  } else if (!stale_) {
    // A read-only peer writes nothing: every partition, no free space.
    for (const auto& slot : slots_) st.f_blocks += slot->info.capacity / IVSHMFS_PAGE_SIZE;
  }
  fuse_reply_statfs(req, &st);
}

void Filesystem::poll(fuse_req_t req, fuse_file_info* fi, fuse_pollhandle* ph) {
  auto& h = *reinterpret_cast<Handle*>(fi->fh);
  if (h.kind != NodeKind::partition && h.kind != NodeKind::follow) {
    if (ph != nullptr) fuse_pollhandle_destroy(ph);
    fuse_reply_poll(req, POLLIN | POLLRDNORM);
    return;
  }
  if (stale_) {
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
  if (ph != nullptr) watcher_.kick();  // a waiter: poll peers quickly again
  unsigned revents = 0;
  if (h.kind == NodeKind::follow) {
    if (follow_has_data(h)) revents |= POLLIN | POLLRDNORM;
  } else {
    auto s = region_->snapshot(slot.info.id);
    if (!s) {
      fuse_reply_err(req, errno_of(s.error()));
      return;
    }
    std::lock_guard lock(h.mutex);
    if (s->length > h.position || s->generation != h.generation) revents |= POLLIN | POLLRDNORM;
    if (h.writable && s->length < slot.info.capacity) revents |= POLLOUT | POLLWRNORM;
  }
  fuse_reply_poll(req, revents);
}

namespace {
// getxattr/listxattr's contract: size 0 asks for the length, a buffer too
// small for the value is ERANGE.
void reply_xattr(fuse_req_t req, std::size_t size, std::string_view value) {
  if (size == 0) {
    fuse_reply_xattr(req, value.size());
  } else if (size < value.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}
}  // namespace

void Filesystem::getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::size_t size) {
  const Node node = decode(ino);
  if (node.kind != NodeKind::partition && node.kind != NodeKind::follow) {
    fuse_reply_err(req, node.kind == NodeKind::none ? ENOENT : ENODATA);
    return;
  }
  if (stale_) {
    fuse_reply_err(req, EIO);
    return;
  }
  auto s = region_->stat(slots_[node.index]->info.id);
  if (!s) {
    fuse_reply_err(req, errno_of(s.error()));
    return;
  }
  for (const auto& [key, value] : partition_xattrs(*s, node.index == self_index_)) {
    if (key != name) continue;
    reply_xattr(req, size, value);
    return;
  }
  fuse_reply_err(req, ENODATA);
}

void Filesystem::listxattr(fuse_req_t req, fuse_ino_t ino, std::size_t size) {
  const Node node = decode(ino);
  std::string names;
  if (node.kind == NodeKind::partition || node.kind == NodeKind::follow) {
    PartitionStat empty;
    for (const auto& entry : partition_xattrs(empty, false)) {
      names += entry.first;
      names.push_back('\0');
    }
  } else if (node.kind == NodeKind::none) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  reply_xattr(req, size, names);
}

// ---------------------------------------------------------------------------
// The follow view

bool Filesystem::follow_has_data(Handle& h) const {
  auto s = region_->snapshot(slots_[h.index]->info.id);
  if (!s) return true;  // let the read report the error
  std::lock_guard lock(h.mutex);
  return s->generation != h.generation || s->length > h.position;
}

bool Filesystem::try_serve_follow(fuse_req_t req, Handle& h, std::size_t size) {
  std::lock_guard lock(h.mutex);
  if (stale_) {
    fuse_reply_err(req, EIO);
    return true;
  }
  const uint32_t id = slots_[h.index]->info.id;
  for (;;) {
    auto s = region_->snapshot(id);
    if (!s) {
      fuse_reply_err(req, errno_of(s.error()));
      return true;
    }
    if (s->generation != h.generation) {
      // The partition was reset: follow its new contents from the start.
      h.generation = s->generation;
      h.position = 0;
    }
    if (h.position >= s->length) return false;
    auto out = scratch(size);
    uint64_t generation = 0;
    auto n = region_->read(id, h.position, out, &generation);
    if (!n) {
      fuse_reply_err(req, errno_of(n.error()));
      return true;
    }
    if (generation != h.generation) continue;  // a reset raced the stat
    h.position += *n;
    fuse_reply_buf(req, reinterpret_cast<const char*>(out.data()), *n);
    return true;
  }
}

// A parked request is answered by whoever takes it out of parked_: the
// watcher (data arrived), on_interrupt (EINTR), or stop/go_stale. The
// interrupt callback is registered before the entry becomes visible to the
// watcher, because the watcher's answer frees the request.
void Filesystem::follow_read(fuse_req_t req, Handle& h, std::size_t size) {
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
      fuse_reply_err(req, stale_ ? EIO : EINTR);
      return;
    }
    if (!follow_has_data(h)) {
      it->second.parked = true;
      lock.unlock();
      watcher_.kick();  // a waiter: poll peers quickly again
      return;
    }
    parked_.erase(it);  // data arrived meanwhile: serve it ourselves
  }
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
  fs->parked_.erase(it);
  lock.unlock();
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
  if (auto r = region_->check_format(); !r) {
    go_stale(r.error().message);
    return false;
  }
  // The kernel caches no attributes (zero timeouts), so invalidating the
  // inode is only a refresh of what else it may hold (an i_size raised by a
  // direct write, mapped pages): at a reset at once, while data flows at most
  // every kInvalEvery per file, and once more after the flow stops.
  constexpr auto kInvalEvery = std::chrono::milliseconds(1);
  bool peer_changed = false;
  bool reset_seen = false;
  std::optional<std::chrono::steady_clock::time_point> now;
  for (auto& slot : slots_) {
    auto s = region_->snapshot(slot->info.id);
    if (!s) continue;
    if (s->length != slot->seen_length || s->generation != slot->seen_generation) {
      const bool reset = s->generation != slot->seen_generation;
      reset_seen = reset_seen || reset;
      slot->seen_length = s->length;
      slot->seen_generation = s->generation;
      // Our own appends are not news: own_partition_changed() woke their
      // waiters already. They do not keep the watcher polling fast.
      if (slot->info.index != self_index_) peer_changed = true;
      partition_changed(*slot);
      // The kernel knows the size of what it wrote through us: our own
      // appends need no refresh, a reset does.
      if (slot->info.index != self_index_ || reset) slot->inval_pending = true;
      if (reset) slot->last_inval = {};
    }
    if (slot->inval_pending && fuse_ != nullptr) {
      if (!now) now = std::chrono::steady_clock::now();
      if (*now - slot->last_inval >= kInvalEvery) {
        slot->inval_pending = false;
        slot->last_inval = *now;
        const uint32_t index = slot->info.index;
        if (slot->lookups.load(std::memory_order_relaxed) > 0) {
          fuse_lowlevel_notify_inval_inode(fuse_, partition_ino(index), -1, 0);  // ENOENT: forgotten meanwhile
        }
        if (slot->follow_lookups.load(std::memory_order_relaxed) > 0) {
          fuse_lowlevel_notify_inval_inode(fuse_, follow_ino(index), -1, 0);
        }
      }
    }
  }
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
  return ((peer_changed || pending_invalidation()) && has_waiters()) || reset_seen;
}

bool Filesystem::pending_invalidation() const noexcept {
  for (const auto& slot : slots_) {
    if (slot->inval_pending) return true;
  }
  return false;
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
  answer_parked(slot.info.index);
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
  for (auto& slot : slots_) wake_pollers(*slot);
  // Our claim lives in the old format: stop heartbeating into the new one.
  std::unique_lock lock(writer_mutex_);
  writer_.reset();
}

// ---------------------------------------------------------------------------
// The operation table: thin function-try-blocks, exceptions stop here.

struct Filesystem::Ops {
  static void init(void* userdata, fuse_conn_info* conn) noexcept try {
    static_cast<Filesystem*>(userdata)->init(conn);
  } catch (const std::exception& e) {
    spdlog::error("init: {}", e.what());
  }

  static void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) noexcept try {
    self(req).lookup(req, parent, name);
  } catch (...) {
    reply_exception(req);
  }

  static void forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) noexcept {
    self(req).forget(ino, nlookup);
    fuse_reply_none(req);
  }

  static void forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) noexcept {
    for (const auto& f : std::span(forgets, count)) self(req).forget(f.ino, f.nlookup);
    fuse_reply_none(req);
  }

  static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) noexcept try {
    self(req).getattr(req, ino);
  } catch (...) {
    reply_exception(req);
  }

  static void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* /*fi*/) noexcept
      try {
    self(req).setattr(req, ino, attr, to_set);
  } catch (...) {
    reply_exception(req);
  }

  static void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) noexcept try {
    self(req).readdir(req, ino, size, off);
  } catch (...) {
    reply_exception(req);
  }

  static void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) noexcept try {
    self(req).open(req, ino, fi);
  } catch (...) {
    reply_exception(req);
  }

  static void read(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) noexcept try {
    self(req).read(req, size, off, fi);
  } catch (...) {
    reply_exception(req);
  }

  static void write_buf(fuse_req_t req, fuse_ino_t /*ino*/, fuse_bufvec* in, off_t /*off*/, fuse_file_info* fi) noexcept
      try {
    self(req).write_buf(req, in, fi);
  } catch (...) {
    reply_exception(req);
  }

  static void release(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) noexcept try {
    self(req).release(req, fi);
  } catch (...) {
    reply_exception(req);
  }

  // Appends are in shared memory the moment write returns: nothing to flush.
  static void flush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* /*fi*/) noexcept { fuse_reply_err(req, 0); }
  static void fsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* /*fi*/) noexcept {
    fuse_reply_err(req, 0);
  }

  static void statfs(fuse_req_t req, fuse_ino_t /*ino*/) noexcept try { self(req).statfs(req); } catch (...) {
    reply_exception(req);
  }

  static void poll(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi, fuse_pollhandle* ph) noexcept try {
    self(req).poll(req, fi, ph);
  } catch (...) {
    reply_exception(req);
  }

  static void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) noexcept try {
    self(req).getxattr(req, ino, name, size);
  } catch (...) {
    reply_exception(req);
  }

  static void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) noexcept try {
    self(req).listxattr(req, ino, size);
  } catch (...) {
    reply_exception(req);
  }

  // The extended attributes describe the region: they are read-only.
  static void setxattr(fuse_req_t req, fuse_ino_t /*ino*/, const char* /*name*/, const char* /*value*/, size_t /*size*/,
                       int /*flags*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void removexattr(fuse_req_t req, fuse_ino_t /*ino*/, const char* /*name*/) noexcept {
    fuse_reply_err(req, EPERM);
  }

  // The set of files is the region's partition table: nothing is created,
  // removed or renamed through the mount.
  static void create(fuse_req_t req, fuse_ino_t /*parent*/, const char* /*name*/, mode_t /*mode*/,
                     fuse_file_info* /*fi*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void mknod(fuse_req_t req, fuse_ino_t /*parent*/, const char* /*name*/, mode_t /*mode*/,
                    dev_t /*rdev*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void mkdir(fuse_req_t req, fuse_ino_t /*parent*/, const char* /*name*/, mode_t /*mode*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void unlink(fuse_req_t req, fuse_ino_t /*parent*/, const char* /*name*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void rmdir(fuse_req_t req, fuse_ino_t /*parent*/, const char* /*name*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void symlink(fuse_req_t req, const char* /*link*/, fuse_ino_t /*parent*/, const char* /*name*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void link(fuse_req_t req, fuse_ino_t /*ino*/, fuse_ino_t /*parent*/, const char* /*name*/) noexcept {
    fuse_reply_err(req, EPERM);
  }
  static void rename(fuse_req_t req, fuse_ino_t /*parent*/, const char* /*name*/, fuse_ino_t /*newparent*/,
                     const char* /*newname*/, unsigned /*flags*/) noexcept {
    fuse_reply_err(req, EPERM);
  }

  static fuse_lowlevel_ops table() noexcept {
    fuse_lowlevel_ops o{};
    o.init = init;
    o.lookup = lookup;
    o.forget = forget;
    o.forget_multi = forget_multi;
    o.getattr = getattr;
    o.setattr = setattr;
    o.readdir = readdir;
    o.open = open;
    o.read = read;
    o.write_buf = write_buf;
    o.release = release;
    o.flush = flush;
    o.fsync = fsync;
    o.statfs = statfs;
    o.poll = poll;
    o.getxattr = getxattr;
    o.listxattr = listxattr;
    o.setxattr = setxattr;
    o.removexattr = removexattr;
    o.create = create;
    o.mknod = mknod;
    o.mkdir = mkdir;
    o.unlink = unlink;
    o.rmdir = rmdir;
    o.symlink = symlink;
    o.link = link;
    o.rename = rename;
    return o;
  }
};

const fuse_lowlevel_ops& Filesystem::operations() noexcept {
  static const fuse_lowlevel_ops ops = Ops::table();
  return ops;
}

}  // namespace ivshmfs::fs
