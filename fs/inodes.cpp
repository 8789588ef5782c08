// SPDX-License-Identifier: MIT
// Inode naming and metadata: which inode is which file, attributes,
// lookup/forget bookkeeping, directories, statfs and extended attributes.
#include "fs_internal.hpp"

#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <array>
#include <cstring>
#include <string_view>

#include "status.hpp"

namespace ivshmfs::fs {

using namespace detail;

// ---------------------------------------------------------------------------
// Inodes

Filesystem::Node Filesystem::decode(fuse_ino_t ino) const noexcept {
  const auto count = static_cast<fuse_ino_t>(slots_.size());
  if (ino == FUSE_ROOT_ID) return {NodeKind::root, 0};
  if (ino == kStatusIno) return {NodeKind::status, 0};
  if (ino == kFollowDirIno) return {NodeKind::follow_dir, 0};
  if (ino < kPartitionIno0) return {};
  const fuse_ino_t epoch = (ino - kPartitionIno0) / kEpochStride;
  const fuse_ino_t rest = (ino - kPartitionIno0) % kEpochStride;
  if (rest < count) return {NodeKind::partition, static_cast<uint32_t>(rest), epoch};
  if (epoch == 0 && ino >= kFollowIno0 && ino < kFollowIno0 + count) {
    return {NodeKind::follow, static_cast<uint32_t>(ino - kFollowIno0)};
  }
  return {};
}

// A partition file's inode number (st_ino, d_ino) never changes. Its FUSE
// node id does, at every reset the watcher handles: a lookup after a reset
// hands the kernel a new node, so a file opened after a reset gets a new
// kernel inode whose size comes from that lookup and whose page cache is
// empty. Reusing the node would keep the size the kernel knew from before
// the reset whenever that lookup's reply crosses another attribute update
// (the kernel then ignores it), and a read inside that old size would ask
// for pages past the new end (docs/filesystem.md, Coherence). Descriptors
// opened before keep the old node; the watcher drops its pages like the
// current one's.
fuse_ino_t Filesystem::partition_ino(uint32_t index) const noexcept { return kPartitionIno0 + index; }
fuse_ino_t Filesystem::partition_node(uint32_t index, uint64_t epoch) const noexcept {
  return kPartitionIno0 + epoch * kEpochStride + index;
}

int Filesystem::inval_partition(Slot& slot, off_t from, off_t len) noexcept {
  if (fuse_ == nullptr || slot.lookups.load(std::memory_order_relaxed) == 0) return 0;
  int dropped = 0;
  uint64_t next = 0;
  for (;;) {
    std::array<uint64_t, 8> batch{};
    std::size_t n = 0;
    {
      std::lock_guard lock(slot.nodes_mutex);
      for (auto it = slot.node_lookups.lower_bound(next); it != slot.node_lookups.end() && n < batch.size(); ++it) {
        batch[n++] = it->first;
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      const int r = fuse_lowlevel_notify_inval_inode(fuse_, partition_node(slot.info().index, batch[i]), from, len);
      if (r == 0) ++dropped;
      if (r != 0 && r != -ENOENT) spdlog::warn("dropping the cached pages of {}: {}", slot.name(), std::strerror(-r));
    }
    if (n < batch.size()) return dropped;
    next = batch[n - 1] + 1;
  }
}
fuse_ino_t Filesystem::follow_ino(uint32_t index) const noexcept { return kFollowIno0 + index; }

std::optional<uint32_t> Filesystem::slot_named(std::string_view name) const {
  // vmN, N a partition id as partition_file_name() writes it.
  uint32_t id = 0;
  if (name.size() < 3 || name.size() > 4 || name.substr(0, 2) != "vm") return std::nullopt;
  for (const char c : name.substr(2)) {
    if (c < '0' || c > '9') return std::nullopt;
    id = id * 10 + static_cast<uint32_t>(c - '0');
  }
  if (partition_file_name(id) != name) return std::nullopt;  // "vm01"
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i]->info().id == id) return i;
  }
  return std::nullopt;
}

bool Filesystem::gone(const Handle& h) const noexcept {
  return h.row != nullptr && slots_[h.index]->row.load(std::memory_order_acquire) != h.row;
}

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
      st.st_size = static_cast<off_t>(format_status(*region_, self_id_, stale_, changes_->status()).size());
      st.st_mtim = st.st_ctim = to_timespec(wall_clock_ns());
      return 0;
    case NodeKind::partition:
    case NodeKind::follow: {
      if (stale_) return EIO;
      const Slot& slot = *slots_[node.index];
      auto s = region_->snapshot(slot.info().id);
      if (!s) return errno_of(s.error());
      const bool own = node.kind == NodeKind::partition && node.index == self_index_;
      // A partition added where another was removed is another file: its
      // st_ino counts the slot's serial (0 in a fixed table: unchanged).
      st.st_ino =
          node.kind == NodeKind::partition ? partition_node(node.index, slot.info().serial) : follow_ino(node.index);
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
  sync_cache(node);
  if (node.kind == NodeKind::partition) {
    // After sync_cache: a lookup that waited for a reset gets the new node.
    node.epoch = slots_[node.index]->epoch.load(std::memory_order_acquire);
    ino = partition_node(node.index, node.epoch);
  }
  fuse_entry_param e{};
  if (const int error = attributes_for_reply(node, e.attr); error != 0) {
    fuse_reply_err(req, error);
    return;
  }
  e.ino = ino;
  // Zero timeouts: a peer's append must show in the very next stat.
  e.attr_timeout = 0.0;
  e.entry_timeout = 0.0;
  const auto count = [&](int64_t n) {
    if (node.kind == NodeKind::partition) {
      Slot& slot = *slots_[node.index];
      std::lock_guard lock(slot.nodes_mutex);
      if ((slot.node_lookups[node.epoch] += static_cast<uint64_t>(n)) == 0) slot.node_lookups.erase(node.epoch);
      slot.lookups.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    }
    if (node.kind == NodeKind::follow) {
      slots_[node.index]->follow_lookups.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    }
  };
  count(1);
  // The kernel did not take the reference (e.g. the request was interrupted).
  if (fuse_reply_entry(req, &e) != 0) count(-1);
}

void Filesystem::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  after_init();
  const Node dir = decode(parent);
  const std::string_view n = name;
  // Every path walk looks its names up (zero entry timeouts): a partition
  // peers added or removed a moment ago shows in this answer, and in the
  // partition lines of .status.
  if (dir.kind == NodeKind::root || dir.kind == NodeKind::follow_dir) catch_up_table();
  if (dir.kind == NodeKind::root) {
    if (n == kStatusName) return reply_entry(req, kStatusIno, {NodeKind::status, 0});
    if (n == kFollowName) return reply_entry(req, kFollowDirIno, {NodeKind::follow_dir, 0});
  }
  if (dir.kind == NodeKind::root || dir.kind == NodeKind::follow_dir) {
    if (auto index = slot_named(n)) {
      if (dir.kind == NodeKind::root) return reply_entry(req, partition_ino(*index), {NodeKind::partition, *index});
      return reply_entry(req, follow_ino(*index), {NodeKind::follow, *index});
    }
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_reply_err(req, dir.kind == NodeKind::none ? ENOENT : ENOTDIR);
}

void Filesystem::forget(fuse_ino_t ino, uint64_t nlookup) noexcept {
  const Node node = decode(ino);
  if (node.kind == NodeKind::partition) {
    Slot& slot = *slots_[node.index];
    std::lock_guard lock(slot.nodes_mutex);
    if (auto it = slot.node_lookups.find(node.epoch); it != slot.node_lookups.end()) {
      const uint64_t n = std::min(it->second, nlookup);
      it->second -= n;
      if (it->second == 0) slot.node_lookups.erase(it);
      slot.lookups.fetch_sub(n, std::memory_order_relaxed);
    }
  }
  if (node.kind == NodeKind::follow) slots_[node.index]->follow_lookups.fetch_sub(nlookup, std::memory_order_relaxed);
}

void Filesystem::getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  after_init();
  const Node node = decode(ino);
  sync_cache(node);
  struct stat st {};
  if (const int error = attributes_for_reply(node, st); error != 0) {
    fuse_reply_err(req, error);
    return;
  }
  fuse_reply_attr(req, &st, 0.0);
}

void Filesystem::readdir(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off) {
  struct Entry {
    std::string name;
    fuse_ino_t ino;
    mode_t type;
  };
  const Node node = decode(ino);
  // A listing starts at offset 0: it shows the table as peers left it.
  if (off == 0 && (node.kind == NodeKind::root || node.kind == NodeKind::follow_dir)) catch_up_table();
  std::vector<Entry> entries;
  if (node.kind == NodeKind::root) {
    entries.push_back({".", FUSE_ROOT_ID, S_IFDIR});
    entries.push_back({"..", FUSE_ROOT_ID, S_IFDIR});
    entries.push_back({kStatusName, kStatusIno, S_IFREG});
    entries.push_back({kFollowName, kFollowDirIno, S_IFDIR});
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i]->present()) entries.push_back({slots_[i]->name(), partition_ino(i), S_IFREG});
    }
  } else if (node.kind == NodeKind::follow_dir) {
    entries.push_back({".", kFollowDirIno, S_IFDIR});
    entries.push_back({"..", FUSE_ROOT_ID, S_IFDIR});
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i]->present()) entries.push_back({slots_[i]->name(), follow_ino(i), S_IFREG});
    }
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

void Filesystem::statfs(fuse_req_t req) {
  struct statvfs st {};
  st.f_bsize = IVSHMFS_PAGE_SIZE;
  st.f_frsize = IVSHMFS_PAGE_SIZE;
  st.f_namemax = 255;
  // No inode table to fill: files are the region's partitions, nothing is
  // ever created. Zero total and free inodes is how df -i shows a file
  // system without an inode limit ("-" for use%), as for /proc; counting
  // the files as the total with none free showed "100% used".
  st.f_files = 0;
  st.f_ffree = 0;
  st.f_favail = 0;
  if (!stale_ && self_index_ != kNoPartition) {
    // df shows the own partition: what this peer can still write.
    const PartitionInfo& p = slots_[self_index_]->info();
    if (auto s = region_->snapshot(p.id)) {
      st.f_blocks = p.capacity / IVSHMFS_PAGE_SIZE;
      st.f_bfree = st.f_bavail = s->free / IVSHMFS_PAGE_SIZE;
    }
  } else if (!stale_) {
    // A read-only peer writes nothing: every partition, no free space.
    for (const auto& slot : slots_) st.f_blocks += slot->info().capacity / IVSHMFS_PAGE_SIZE;
  }
  fuse_reply_statfs(req, &st);
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
  auto s = region_->stat(slots_[node.index]->info().id);
  if (!s) {
    fuse_reply_err(req, errno_of(s.error()));
    return;
  }
  const uint64_t skipped = slots_[node.index]->skipped.load(std::memory_order_relaxed);
  for (const auto& [key, value] : partition_xattrs(*s, node.index == self_index_, skipped)) {
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
    for (const auto& entry : partition_xattrs(empty, false, 0)) {
      names += entry.first;
      names.push_back('\0');
    }
  } else if (node.kind == NodeKind::none) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  reply_xattr(req, size, names);
}

}  // namespace ivshmfs::fs
