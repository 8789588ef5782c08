// SPDX-License-Identifier: MIT
// Joining at run time (a live partition table): two mounted peers; a third
// daemon joins with -o id=auto,size=...; both see vm2 appear (readdir,
// lookup, .status, follow/vm2) and read its data byte-exact; it leaves,
// 'ivshmctl remove' frees its partition (descriptors of it then fail with
// EIO, lookups with ENOENT), and a fourth daemon joins into the same space as
// a new, empty file.
#include <dirent.h>

#include <set>
#include <thread>

#include "ivshmfs/writer.hpp"
#include "mount_support.hpp"

namespace ivshmfs::fstest {
namespace {

std::set<std::string> list_dir(const std::string& dir) {
  std::set<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* e = ::readdir(d)) names.insert(e->d_name);
  ::closedir(d);
  return names;
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

class Join : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto missing = missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
    if (split_mode()) GTEST_SKIP() << "skipped: a split region grows by new pieces, not by its table";
    // Two partitions now, room for six more.
    auto backend = Backend::open(region_.path(), BackendOptions{true, false, 0});
    ASSERT_TRUE(backend) << backend.error().message;
    FormatOptions format;
    format.partitions = 2;
    format.slots = 8;
    format.force = true;
    ASSERT_TRUE(Region::format(**backend, format));
    a_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_a_.path(), 0});
    b_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_b_.path(), 1});
    ASSERT_TRUE(a_->start()) << "vm0 daemon did not mount:\n" << a_->log();
    ASSERT_TRUE(b_->start()) << "vm1 daemon did not mount:\n" << b_->log();
  }
  void TearDown() override {
    d_.reset();
    c_.reset();
    b_.reset();
    a_.reset();
  }
  // The data area of partition `id` as the library sees it now.
  uint64_t data_offset(uint32_t id) {
    auto region = Region::open_path(region_.path(), RegionOpenOptions{});
    if (!region) return 0;
    const PartitionInfo* p = (*region)->find(id);
    return p == nullptr ? 0 : p->data_offset;
  }

  RegionFile region_{2 << 20, 2};
  TempDir dir_a_{"join-a"};
  TempDir dir_b_{"join-b"};
  TempDir dir_c_{"join-c"};
  TempDir dir_d_{"join-d"};
  std::unique_ptr<Daemon> a_, b_, c_, d_;
};

TEST_F(Join, AThirdPeerJoinsLeavesAndAFourthReusesItsSpace) {
  EXPECT_FALSE(exists(a_->file("vm2"))) << "no vm2 before anyone joins";
  c_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_c_.path(), std::nullopt, {"id=auto", "size=64K"}});
  ASSERT_TRUE(c_->start()) << "the joining daemon did not mount:\n" << c_->log();
  EXPECT_NE(c_->log().find("added partition 2"), std::string::npos) << c_->log();

  for (Daemon* peer : {a_.get(), b_.get()}) {
    ASSERT_TRUE(eventually([&] { return exists(peer->file("vm2")); })) << peer->mountpoint() << " never showed vm2:\n"
                                                                       << peer->log();
    EXPECT_TRUE(list_dir(peer->mountpoint()).count("vm2")) << "readdir lists vm2";
    EXPECT_TRUE(list_dir(peer->file("follow")).count("vm2")) << "readdir of follow/ lists vm2";
    EXPECT_NE(read_text(peer->file(".status")).find("partition id=2 file=vm2"), std::string::npos)
        << read_text(peer->file(".status"));
  }
  const std::string text = "records from the joining peer\n";
  append(c_->file("vm2"), text);
  for (Daemon* peer : {a_.get(), b_.get()}) {
    EXPECT_TRUE(eventually([&] { return read_all(peer->file("vm2")) == text; }))
        << peer->mountpoint() << "/vm2 reads '" << read_all(peer->file("vm2")) << "'";
  }
  {
    const int follow = ::open(a_->file("follow/vm2").c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(follow, 0) << std::strerror(errno);
    std::string got(text.size(), '\0');
    EXPECT_EQ(::read(follow, got.data(), got.size()), static_cast<ssize_t>(text.size())) << std::strerror(errno);
    EXPECT_EQ(got, text) << "follow/vm2 streams the new partition";
    ::close(follow);
  }
  struct stat before {};
  ASSERT_EQ(::stat(a_->file("vm2").c_str(), &before), 0);
  const uint64_t first_offset = data_offset(2);
  ASSERT_NE(first_offset, 0U);

  // The joined peer leaves; its partition is removed while a's descriptor is open.
  const int held = ::open(a_->file("vm2").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(held, 0) << std::strerror(errno);
  c_->stop();
  const int rc = run_program({IVSHMCTL_PATH, "remove", "--id", "2", region_.path()});
  ASSERT_EQ(rc, 0) << "ivshmctl remove failed";
  for (Daemon* peer : {a_.get(), b_.get()}) {
    EXPECT_TRUE(eventually([&] { return !exists(peer->file("vm2")); }))
        << peer->mountpoint() << " still shows vm2 after its removal";
    EXPECT_FALSE(list_dir(peer->mountpoint()).count("vm2"));
    EXPECT_EQ(read_text(peer->file(".status")).find("file=vm2"), std::string::npos);
  }
  errno = 0;
  ::open(a_->file("vm2").c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_EQ(errno, ENOENT) << "a lookup of a removed partition";
  char byte = 0;
  EXPECT_EQ(::pread(held, &byte, 1, 0), -1) << "a descriptor of the removed partition reads nothing";
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  ::close(held);

  // A fourth peer joins: the same id, the same space, a new empty file.
  d_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_d_.path(), std::nullopt, {"id=auto", "size=64K"}});
  ASSERT_TRUE(d_->start()) << "the fourth daemon did not mount:\n" << d_->log();
  EXPECT_EQ(data_offset(2), first_offset) << "the removed partition's space is reused";
  // Each peer takes the new table in on its own tick: wait for both before
  // reading through either (read_all asserts that the file opens).
  for (Daemon* peer : {a_.get(), b_.get()}) {
    ASSERT_TRUE(eventually([&] { return exists(peer->file("vm2")); })) << peer->mountpoint() << ":\n" << peer->log();
  }
  struct stat after {};
  ASSERT_EQ(::stat(a_->file("vm2").c_str(), &after), 0);
  EXPECT_EQ(after.st_size, 0) << "nothing of the old partition shows in the new one";
  EXPECT_NE(after.st_ino, before.st_ino) << "a new partition in the slot is a new file";
  const std::string fourth = "the fourth peer\n";
  append(d_->file("vm2"), fourth);
  for (Daemon* peer : {a_.get(), b_.get()}) {
    EXPECT_TRUE(eventually([&] { return read_all(peer->file("vm2")) == fourth; }))
        << peer->mountpoint() << "/vm2 reads '" << read_all(peer->file("vm2")) << "'";
  }
}

// On futex mounts (both peers own a partition of a host file) the watcher
// looks only when woken, or at its fallback look about a second later:
// lookup, readdir and .status must take a table change in themselves. No
// waiting here: each check runs right after the change returned.
TEST_F(Join, AnAddedPartitionShowsAtOnceWithoutWaitingForALook) {
  for (Daemon* peer : {a_.get(), b_.get()}) {
    ASSERT_NE(read_text(peer->file(".status")).find("wakeups source=futex"), std::string::npos)
        << peer->mountpoint() << " does not run the futex source:\n"
        << read_text(peer->file(".status"));
  }
  auto region = Region::open_path(region_.path(), RegionOpenOptions{true});
  ASSERT_TRUE(region) << region.error().message;
  // Let both watchers settle into their slow wait first, so that what
  // follows does not ride on a look that was due anyway.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto added = (*region)->add_partition(NewPartition{std::nullopt, 64 * 1024, false});
  ASSERT_TRUE(added) << added.error().message;
  ASSERT_EQ(added->id, 2U);
  const std::string text = "written before anyone looked\n";
  {
    auto writer = PartitionWriter::claim(*region, 2);
    ASSERT_TRUE(writer) << writer.error().message;
    auto n = (*writer)->append(std::as_bytes(std::span(text.data(), text.size())));
    ASSERT_TRUE(n && *n == text.size());
  }
  // a: a listing first; b: a lookup first (stat), then .status.
  EXPECT_TRUE(list_dir(a_->mountpoint()).count("vm2")) << "readdir right after the add lists vm2";
  EXPECT_TRUE(list_dir(a_->file("follow")).count("vm2")) << "readdir of follow/ right after the add lists vm2";
  struct stat st {};
  ASSERT_EQ(::stat(b_->file("vm2").c_str(), &st), 0) << "stat right after the add: " << std::strerror(errno);
  EXPECT_EQ(st.st_size, static_cast<off_t>(text.size()));
  for (Daemon* peer : {a_.get(), b_.get()}) {
    EXPECT_NE(read_text(peer->file(".status")).find("partition id=2 file=vm2"), std::string::npos)
        << read_text(peer->file(".status"));
    EXPECT_EQ(read_all(peer->file("vm2")), text) << peer->mountpoint() << "/vm2";
  }

  // Removed: a lookup right after fails, the listing and .status drop it.
  ASSERT_TRUE((*region)->remove_partition(2)) << "remove partition 2";
  errno = 0;
  EXPECT_NE(::stat(b_->file("vm2").c_str(), &st), 0) << "stat right after the removal";
  EXPECT_EQ(errno, ENOENT) << std::strerror(errno);
  EXPECT_FALSE(list_dir(a_->mountpoint()).count("vm2")) << "readdir right after the removal";
  EXPECT_EQ(read_text(a_->file(".status")).find("file=vm2"), std::string::npos) << read_text(a_->file(".status"));
}

TEST_F(Join, IdAutoClaimsAFreePartitionBeforeAddingOne) {
  b_->stop();  // vm1 is free again
  c_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_c_.path(), std::nullopt, {"id=auto"}});
  ASSERT_TRUE(c_->start()) << c_->log();
  EXPECT_NE(c_->log().find("claimed partition 1"), std::string::npos) << c_->log();
  EXPECT_FALSE(exists(a_->file("vm2"))) << "no partition was added";
}

TEST_F(Join, RemovalWaitsUntilTheOwnerIsGone) {
  // Its owner is alive: removal is refused.
  EXPECT_NE(run_program({IVSHMCTL_PATH, "remove", "--id", "1", region_.path()}), 0);
  EXPECT_TRUE(exists(a_->file("vm1")));
  // SIGKILL leaves the claim, proven dead (same host and PID namespace): removable.
  b_->kill9();
  ASSERT_EQ(run_program({IVSHMCTL_PATH, "remove", "--id", "1", region_.path()}), 0);
  EXPECT_TRUE(eventually([&] { return !exists(a_->file("vm1")); }));
  EXPECT_TRUE(exists(a_->file("vm0"))) << "the others are served on";
  append(a_->file("vm0"), "still here");
  EXPECT_EQ(read_all(a_->file("vm0")), "still here");
}

// A split region grows by pieces: 'ivshmctl add PREFIX' creates PREFIX.vmN,
// and every mounted host peer shows it at its next lookup, listing or
// .status read (a stat of the pieces' directory tells that it changed).
// Runs in the split pass (fs.split.*); the shared pass runs Join above.
class SplitJoin : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto missing = missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
    if (!split_mode()) GTEST_SKIP() << "skipped: the split pass (fs.split.*) runs it; this pass runs Join";
    a_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_a_.path(), 0});
    b_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_b_.path(), 1});
    ASSERT_TRUE(a_->start()) << "vm0 daemon did not mount:\n" << a_->log();
    ASSERT_TRUE(b_->start()) << "vm1 daemon did not mount:\n" << b_->log();
  }
  void TearDown() override {
    c_.reset();
    b_.reset();
    a_.reset();
  }
  [[nodiscard]] std::string piece(uint32_t id) const { return split_piece_path(region_.path(), id); }

  RegionFile region_{128 << 10, 2};  // two pieces of 64 KiB
  TempDir dir_a_{"splitjoin-a"};
  TempDir dir_b_{"splitjoin-b"};
  TempDir dir_c_{"splitjoin-c"};
  std::unique_ptr<Daemon> a_, b_, c_;
};

TEST_F(SplitJoin, APieceAddedOnTheHostShowsAtOnceAndItsIdIsReused) {
  // ivshmctl add: a new piece of another size, seen with no wait.
  ASSERT_EQ(run_program({IVSHMCTL_PATH, "add", "--size", "128K", region_.path()}), 0) << "ivshmctl add";
  struct stat file {};
  ASSERT_EQ(::stat(piece(2).c_str(), &file), 0) << piece(2) << ": " << std::strerror(errno);
  EXPECT_EQ(file.st_size, 128 << 10) << "the piece has the size asked for";
  const std::string text = "in the new piece\n";
  {
    RegionOpenOptions open;
    open.writable = true;
    open.own_id = 2;
    auto region = Region::open_path(region_.path(), open);
    ASSERT_TRUE(region) << region.error().message;
    auto writer = PartitionWriter::claim(*region, 2);
    ASSERT_TRUE(writer) << writer.error().message;
    auto n = (*writer)->append(std::as_bytes(std::span(text.data(), text.size())));
    ASSERT_TRUE(n && *n == text.size());
  }
  EXPECT_TRUE(list_dir(a_->mountpoint()).count("vm2")) << "readdir right after the add lists vm2:\n" << a_->log();
  EXPECT_TRUE(list_dir(a_->file("follow")).count("vm2")) << "follow/ lists vm2";
  struct stat st {};
  ASSERT_EQ(::stat(b_->file("vm2").c_str(), &st), 0) << "stat right after the add: " << std::strerror(errno) << "\n"
                                                     << b_->log();
  EXPECT_EQ(st.st_size, static_cast<off_t>(text.size()));
  for (Daemon* peer : {a_.get(), b_.get()}) {
    const std::string status = read_text(peer->file(".status"));
    EXPECT_NE(status.find("partition id=2 file=vm2"), std::string::npos) << status;
    EXPECT_EQ(read_all(peer->file("vm2")), text) << peer->mountpoint() << "/vm2";
  }

  // Removed on the host: gone from both mounts at once; a descriptor held
  // open fails with EIO.
  const int held = ::open(a_->file("vm2").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(held, 0) << std::strerror(errno);
  ASSERT_EQ(run_program({IVSHMCTL_PATH, "remove", "--id", "2", region_.path()}), 0) << "ivshmctl remove";
  EXPECT_NE(::access(piece(2).c_str(), F_OK), 0) << "the piece file is removed";
  errno = 0;
  EXPECT_NE(::stat(b_->file("vm2").c_str(), &st), 0) << "stat right after the removal";
  EXPECT_EQ(errno, ENOENT) << std::strerror(errno);
  EXPECT_FALSE(list_dir(a_->mountpoint()).count("vm2")) << "readdir right after the removal";
  char byte = 0;
  EXPECT_EQ(::pread(held, &byte, 1, 0), -1) << "a descriptor of the removed piece reads nothing";
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  ::close(held);

  // A third daemon joins with id=auto: it creates its own piece, with the
  // freed id, and writes through its mount; both peers read it.
  c_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_c_.path(), std::nullopt, {"id=auto", "size=64K"}});
  ASSERT_TRUE(c_->start()) << "the joining daemon did not mount:\n" << c_->log();
  EXPECT_NE(c_->log().find("added partition 2"), std::string::npos) << c_->log();
  ASSERT_EQ(::stat(piece(2).c_str(), &file), 0) << "id=auto created " << piece(2);
  EXPECT_EQ(file.st_size, 64 << 10);
  const std::string joined = "from the joined peer\n";
  append(c_->file("vm2"), joined);
  for (Daemon* peer : {a_.get(), b_.get()}) {
    EXPECT_EQ(read_all(peer->file("vm2")), joined) << peer->mountpoint() << "/vm2 is the new piece, not the old one";
  }
  // Its piece has a live owner: removal is refused, the piece stays.
  EXPECT_NE(run_program({IVSHMCTL_PATH, "remove", "--id", "2", region_.path()}), 0);
  EXPECT_EQ(::access(piece(2).c_str(), F_OK), 0);
}

TEST_F(SplitJoin, AddRefusesBadSizesAndTakenIds) {
  EXPECT_EQ(run_program({IVSHMCTL_PATH, "add", "--size", "100K", region_.path()}), 1) << "not a power of two";
  EXPECT_EQ(run_program({IVSHMCTL_PATH, "add", "--id", "1", "--size", "64K", region_.path()}), 1) << "vm1 exists";
  EXPECT_EQ(run_program({IVSHMCTL_PATH, "add", "--ring", "--size", "64K", region_.path()}), 2) << "rings";
  EXPECT_NE(::access(piece(2).c_str(), F_OK), 0) << "nothing was created";
  EXPECT_FALSE(list_dir(a_->mountpoint()).count("vm2"));
}

}  // namespace
}  // namespace ivshmfs::fstest
