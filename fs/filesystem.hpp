// SPDX-License-Identifier: MIT
// The FUSE file system over a region: one file per partition, a follow/ view
// whose reads wait for more data, and a .status file. Every FUSE operation is
// a static function-try-block that forwards to a member and turns any
// exception into an errno, so nothing escapes into libfuse.
//
// Threads: libfuse's worker threads run the operations; the change source's
// thread (polling or doorbells, change_source.hpp) looks at the control
// blocks and wakes poll handles and parked follow reads; the notifier
// thread drops pages from the kernel's page cache (data_path.cpp); the
// writer's own thread heartbeats the claim.
//
// The data path (getattr, read, write, poll, follow reads, watcher ticks)
// uses Region::snapshot only: no system call, no allocation. Region::stat
// (which may read /proc to tell whether a local owner still runs) is kept for
// .status and the extended attributes.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "change_source.hpp"
#include "ivshmfs/region.hpp"
#include "ivshmfs/writer.hpp"
#include "options.hpp"

namespace ivshmfs::fs {

class Filesystem {
 public:
  // `writer` owns this peer's partition of `region`; a null writer makes a
  // read-only peer (every file 0444, no partition of its own). `server`:
  // this peer's connection to ivshm-server (-o server=), whose eventfds wake
  // it (make_change_source).
  Filesystem(std::shared_ptr<Region> region, std::unique_ptr<PartitionWriter> writer, const Options& options,
             std::unique_ptr<ServerClient> server = nullptr);
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;
  ~Filesystem();

  // This peer's partition id; none on a read-only peer.
  [[nodiscard]] std::optional<uint32_t> self_id() const noexcept { return self_id_; }

  // The operation table for fuse_session_new; userdata must be this object.
  static const fuse_lowlevel_ops& operations() noexcept;

  // Mounted: starts watching peers (notifications need the FUSE channel).
  void start(fuse_session* fuse);
  // The FUSE loop ended: stops watching and answers parked reads.
  void stop() noexcept;

  enum class NodeKind { none, root, status, follow_dir, partition, follow };
  struct Node {
    NodeKind kind = NodeKind::none;
    uint32_t index = 0;  // partition's position in the region's table
    uint64_t epoch = 0;  // partition files: the node id's epoch (see inodes.cpp)
  };

 private:
  struct Ops;
  struct Handle;
  struct Slot;
  struct ParkedRead {
    Handle* handle = nullptr;
    std::size_t size = 0;
    bool parked = false;       // the watcher may answer it
    bool interrupted = false;  // interrupted while being parked
  };

  // Operations (called from the static wrappers).
  void init(fuse_conn_info* conn);
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void forget(fuse_ino_t ino, uint64_t nlookup) noexcept;
  void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void setattr(fuse_req_t req, fuse_ino_t ino, const struct stat* attr, int to_set);
  void readdir(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off);
  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void read(fuse_req_t req, std::size_t size, off_t off, fuse_file_info* fi);
  void write_buf(fuse_req_t req, fuse_bufvec* in, off_t off, fuse_file_info* fi);
  void release(fuse_req_t req, fuse_file_info* fi);
  void statfs(fuse_req_t req);
  void poll(fuse_req_t req, fuse_file_info* fi, fuse_pollhandle* ph);
  void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::size_t size);
  void listxattr(fuse_req_t req, fuse_ino_t ino, std::size_t size);

  [[nodiscard]] Node decode(fuse_ino_t ino) const noexcept;
  [[nodiscard]] fuse_ino_t partition_ino(uint32_t index) const noexcept;
  [[nodiscard]] fuse_ino_t partition_node(uint32_t index, uint64_t epoch) const noexcept;
  // Drops [from, from+len) (len 0: to the end) of every node of the slot the
  // kernel holds; returns how many it dropped.
  int inval_partition(Slot& slot, off_t from, off_t len) noexcept;
  [[nodiscard]] fuse_ino_t follow_ino(uint32_t index) const noexcept;
  // 0 and `out` filled, or an errno.
  int attributes(Node node, struct stat& out) const;
  void reply_entry(fuse_req_t req, fuse_ino_t ino, Node node);
  int reset_own_partition();
  void after_init();
  // Page cache bookkeeping (data_path.cpp).
  [[nodiscard]] bool may_cache(Node node) const noexcept;
  bool wait_cache_current(Slot& slot, uint64_t generation);
  void sync_cache(Node node);
  // The largest size up to `length` the kernel may be shown now (see
  // data_path.cpp); waits a bounded time for it to reach `length`.
  // `shows_size`: an attribute reply will show the result.
  uint64_t settle_tail(Slot& slot, uint64_t length, bool shows_size) noexcept;
  // 0 and `out` filled, or an errno; for a cached partition file, a size
  // that leaves no short page cached below it (settle_tail).
  int attributes_for_reply(Node node, struct stat& out);
  void invalidate_own_tail(uint64_t new_length) noexcept;
  // The notifier thread: the only one that drops pages for the page cache
  // rule (a reset, a short last page). It never holds a lock a request needs
  // while the kernel waits for the reads of the pages it drops.
  struct Notifier;
  void notifier_loop(const std::shared_ptr<Notifier>& control) noexcept;
  void notify_due() noexcept;
  void read_partition(fuse_req_t req, Handle& h, std::size_t size, off_t off);
  void read_ring(fuse_req_t req, Handle& h, std::size_t size, off_t off);

  // The follow view: answers now if data is there, else parks the request.
  void follow_read(fuse_req_t req, Handle& h, std::size_t size);
  bool try_serve_follow(fuse_req_t req, Handle& h, std::size_t size);
  bool follow_has_data(Handle& h) const;
  static void on_interrupt(fuse_req_t req, void* data) noexcept;
  static void mark_interrupted(Handle& h) noexcept;
  void fail_parked(int error, bool only_slot, uint32_t index) noexcept;

  // The change source's look and what it does on a change.
  bool tick();
  // A live partition table: takes in the region's table changes (slots
  // gaining or losing a partition). Returns whether any did.
  bool follow_table();
  // Lookups in the root and follow/ (so also of .status) and readdir: when
  // peers changed the table since the watcher last followed it, kick the
  // change source and wait (bounded) for a look that follows it, so a
  // partition added (or removed) before this request shows in its answer.
  // follow_table() stays the watcher's alone. Cheap when nothing changed
  // (Region::table_moved).
  void catch_up_table();
  // The slot of the partition file named `name` (vmN), if it is present.
  [[nodiscard]] std::optional<uint32_t> slot_named(std::string_view name) const;
  // An open partition or follow file whose partition left its slot since.
  [[nodiscard]] bool gone(const Handle& h) const noexcept;
  std::string last_table_error_;  // the watcher's: logged once until it changes
  // The watcher's follow_table() calls, started and finished (catch_up_table
  // waits for one that started after it saw the table move).
  std::mutex follow_mutex_;
  std::condition_variable followed_;
  uint64_t follows_started_ = 0;   // guarded by follow_mutex_
  uint64_t follows_finished_ = 0;  // guarded by follow_mutex_
  // Partition ids (bits) with a poll handle or a parked follow read.
  uint64_t waited_for();
  [[nodiscard]] bool pending_invalidation() const noexcept;
  bool has_waiters();
  void partition_changed(Slot& slot);
  // A local append to the own partition (its peers were rung already, by
  // ChangeSource::committed): wakes its pollers and parked follow reads now,
  // if there are any (cheap when there are none).
  void own_partition_changed() noexcept;
  void answer_parked(uint32_t index);
  void wake_pollers(Slot& slot) noexcept;
  void go_stale(const std::string& why);

  static constexpr uint32_t kNoPartition = UINT32_MAX;

  std::shared_ptr<Region> region_;
  std::optional<uint32_t> self_id_;     // none on a read-only peer
  uint32_t self_index_ = kNoPartition;  // the own partition's slot
  bool copy_own_reads_ = false;         // the mapping cannot be handed to the kernel
  bool single_thread_ = false;          // -s: no request may wait on another
  bool page_cache_ = true;              // off with -o direct_io
  bool overrun_skip_ = false;           // -o overrun=skip
  std::string mountpoint_;
  std::once_flag readahead_once_;
  // A read-only open of the own file used the page cache: own appends must
  // drop the kernel's stale copy of the old last page.
  std::atomic<bool> own_cached_{false};
  FileOwnership ownership_;
  std::vector<std::unique_ptr<Slot>> slots_;  // by table slot; never resized after construction

  // Shared by appends and own-partition reads; exclusive for a reset (so a
  // zero-copy read of the own partition never races it) and for dropping the
  // writer when the region is formatted anew.
  mutable std::shared_mutex writer_mutex_;
  std::unique_ptr<PartitionWriter> writer_;
  // Serialises the writes among themselves (a writer belongs to one thread
  // at a time), so one write() is committed whole, never interleaved.
  std::mutex append_mutex_;

  std::atomic<bool> stale_{false};
  std::chrono::steady_clock::time_point last_shrink_check_{};  // the watcher's
  std::atomic<bool> lost_claim_logged_{false};
  fuse_session* fuse_ = nullptr;

  std::mutex handles_mutex_;
  std::unordered_map<Handle*, std::unique_ptr<Handle>> handles_;

  std::mutex park_mutex_;
  std::unordered_map<fuse_req_t, ParkedRead> parked_;

  std::unique_ptr<ChangeSource> changes_;

  std::shared_ptr<Notifier> notifier_;
  std::thread notifier_thread_;
};

}  // namespace ivshmfs::fs
