// SPDX-License-Identifier: MIT
// The Filesystem object: construction, start/stop, FUSE init and the
// operation table (thin function-try-blocks; exceptions stop there).
#include "fs_internal.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>

#include "status.hpp"

namespace ivshmfs::fs {

using namespace detail;

Filesystem::Filesystem(std::shared_ptr<Region> region, std::unique_ptr<PartitionWriter> writer, const Options& options,
                       std::unique_ptr<ServerClient> server)
    : region_(std::move(region)),
      single_thread_(options.singlethread),
      page_cache_(options.page_cache),
      overrun_skip_(options.overrun_skip),
      mountpoint_(options.mountpoint),
      ownership_(options.ownership),
      writer_(std::move(writer)) {
  if (writer_) self_id_ = writer_->id();
  changes_ = make_change_source(region_, self_id_, options, std::move(server));
  // The kernel pins the pages of a reply: a mapping without struct pages (a
  // PCI resource file, or a /dev/ivshmN whose driver says so, see driver.md)
  // fails there with EFAULT, so such reads go through a private buffer.
  for (const Backend* backend : region_->backends()) {
    copy_own_reads_ = copy_own_reads_ || backend->kind() == BackendKind::pci_resource ||
                      (backend->device_info() && !backend->device_info()->struct_pages);
  }
  // One slot per table slot (a live table's free ones too, so slots never
  // move while the table changes); a partition's index is its slot.
  const uint32_t count = std::max<uint32_t>(region_->info().table_slots, 1);
  for (uint32_t i = 0; i < count; ++i) slots_.push_back(std::make_unique<Slot>(i));
  for (const PartitionInfo& p : region_->partitions()) {
    if (p.index >= slots_.size()) continue;
    Slot& slot = *slots_[p.index];
    slot.row.store(&p, std::memory_order_release);
    if (auto s = region_->snapshot(p.id)) {
      slot.seen_length = s->length;
      slot.seen_generation = s->generation;
      slot.cache_generation = s->generation;
      slot.requested_generation = s->generation;
      slot.pending_generation = s->generation;
    }
    if (self_id_ && p.id == *self_id_) self_index_ = p.index;
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

namespace {

// /proc/self/mountinfo escapes blanks and backslashes in paths as octal.
std::string mountinfo_escape(const std::string& path) {
  std::string out;
  for (const char c : path) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\\') {
      char octal[5];
      std::snprintf(octal, sizeof octal, "\\%03o", static_cast<unsigned char>(c));
      out += octal;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The kernel reads ahead at most read_ahead_kb of the mount's backing device
// info (128 KiB unless raised; FUSE lets the daemon lower it only). A FUSE
// request carries up to 1 MiB: reading ahead as much makes one round trip
// per MiB for sequential readers. Best effort: without the right to write
// sysfs the kernel's default stays.
void raise_readahead(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  const std::string escaped = mountinfo_escape(mountpoint);
  std::string device;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, point;
    fields >> id >> parent >> devno >> root >> point;
    const auto dash = line.find(" - ");
    if (point == escaped && dash != std::string::npos && line.compare(dash + 3, 4, "fuse") == 0) device = devno;
  }
  if (device.empty()) return;
  const std::string path = "/sys/class/bdi/" + device + "/read_ahead_kb";
  std::ofstream out(path);
  out << (kMaxRequest / 1024) << '\n';
  out.flush();
  if (!out) {
    spdlog::debug("could not raise the readahead in {}: the kernel's default stays", path);
  } else {
    spdlog::debug("readahead raised to {} KiB ({})", kMaxRequest / 1024, path);
  }
}

}  // namespace

void Filesystem::start(fuse_session* fuse) {
  fuse_ = fuse;
  if (page_cache_ && !single_thread_) {
    notifier_ = std::make_shared<Notifier>();
    notifier_thread_ = std::thread([this, control = notifier_] { notifier_loop(control); });
  }
  changes_->start({[this] { return tick(); }, [this] { return waited_for(); }});
}

// The kernel sets the readahead from our INIT reply once it processed it,
// before it sends any other request: the first lookup or getattr comes after.
void Filesystem::after_init() {
  std::call_once(readahead_once_, [this] { raise_readahead(mountpoint_); });
}

void Filesystem::stop() noexcept {
  changes_->stop();
  fail_parked(EINTR, false, 0);
  if (notifier_thread_.joinable()) {
    {
      std::lock_guard lock(notifier_->mutex);
      notifier_->stopping = true;
    }
    notifier_->wake.notify_one();
    // A drop in progress waits for reads no worker answers now that the loop
    // ended; it returns when the connection goes, after this. The notifier
    // then touches nothing (see notifier_loop).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (!notifier_->done.load() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (notifier_->done.load()) {
      notifier_thread_.join();
    } else {
      spdlog::warn("dropping cached pages still waits for reads; not waiting for it");
      notifier_thread_.detach();
    }
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
  // Page cache (see data_path.cpp): with AUTO_INVAL_DATA the kernel would ask
  // for the attributes before every read, one round trip per read again.
  // EXPLICIT_INVAL_DATA stays off: whenever the kernel learns a new size it
  // zero-fills the cached page holding that size past it (truncate_pagecache,
  // growing sizes too), and only its own drop of the file's pages, which
  // EXPLICIT_INVAL_DATA turns off, removes that page again.
  conn->want &= ~static_cast<unsigned>(FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_EXPLICIT_INVAL_DATA);
  spdlog::debug("FUSE protocol {}.{}, max_write {}, capable {:#x}, want {:#x}", conn->proto_major, conn->proto_minor,
                conn->max_write, conn->capable, conn->want);
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

  static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) noexcept try {
    self(req).getattr(req, ino, fi);
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

  static void write_buf(fuse_req_t req, fuse_ino_t /*ino*/, fuse_bufvec* in, off_t off, fuse_file_info* fi) noexcept
      try {
    self(req).write_buf(req, in, off, fi);
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
