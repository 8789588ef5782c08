// SPDX-License-Identifier: MIT
// The files of a mounted region, through ordinary system calls: names, modes,
// ownership enforced by the daemon, append semantics, resets, a full
// partition, .status and extended attributes. Two daemons over one region
// file, as vm0 and vm1, the way two VMs see one region.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mount_support.hpp"

namespace ivshmfs::fstest {
namespace {

// errno of a failed call, 0 when it succeeded.
int errno_of(int result) { return result < 0 ? errno : 0; }

int open_errno(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

std::string xattr(const std::string& path, const std::string& name) {
  char value[256];
  const ssize_t n = ::getxattr(path.c_str(), name.c_str(), value, sizeof value);
  EXPECT_GE(n, 0) << path << " " << name << ": " << std::strerror(errno);
  return n < 0 ? std::string{} : std::string(value, static_cast<std::size_t>(n));
}

std::set<std::string> list_dir(const std::string& path) {
  std::set<std::string> names;
  DIR* dir = ::opendir(path.c_str());
  EXPECT_NE(dir, nullptr) << path << ": " << std::strerror(errno);
  if (dir == nullptr) return names;
  while (const dirent* e = ::readdir(dir)) names.insert(e->d_name);
  ::closedir(dir);
  return names;
}

TEST_F(TwoPeers, ListsOneFilePerPartitionAndTheFollowView) {
  EXPECT_EQ(list_dir(dir_a_.path()), (std::set<std::string>{".", "..", ".status", "follow", "vm0", "vm1"}));
  EXPECT_EQ(list_dir(a_->file("follow")), (std::set<std::string>{".", "..", "vm0", "vm1"}));
  struct stat st {};
  EXPECT_EQ(::stat(a_->file("vm2").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(TwoPeers, OwnFileIs0644OthersAre0444) {
  struct stat st {};
  ASSERT_EQ(::stat(a_->file("vm0").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0644);
  EXPECT_EQ(st.st_uid, ::getuid());
  ASSERT_EQ(::stat(a_->file("vm1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0444);
  ASSERT_EQ(::stat(b_->file("vm1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0644);
  ASSERT_EQ(::stat(b_->file(".status").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0444);
}

TEST_F(TwoPeers, OpeningAnotherPeersFileForWritingIsEACCESEvenForRoot) {
  ASSERT_EQ(::geteuid(), 0U) << "this checks that the daemon, not the mode bits, refuses";
  for (int flags : {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND, O_RDONLY | O_TRUNC, O_WRONLY | O_TRUNC}) {
    EXPECT_EQ(open_errno(a_->file("vm1"), flags), EACCES) << "flags " << std::hex << flags;
    EXPECT_EQ(open_errno(b_->file("vm0"), flags), EACCES) << "flags " << std::hex << flags;
  }
  EXPECT_EQ(errno_of(::truncate(a_->file("vm1").c_str(), 0)), EACCES);
  EXPECT_EQ(open_errno(a_->file("vm1"), O_RDONLY), 0);
  EXPECT_EQ(open_errno(a_->file(".status"), O_WRONLY), EACCES);
  EXPECT_EQ(open_errno(a_->file("follow/vm0"), O_WRONLY), EACCES);
}

TEST_F(TwoPeers, AWriteAtTheEndAppendsAndAnywhereElseIsEPERM) {
  const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(::write(fd, "abc", 3), 3) << "the first write starts at the end (0)";
  EXPECT_EQ(::write(fd, "def", 3), 3) << "sequential writes continue at the end";
  EXPECT_EQ(::pwrite(fd, "XYZ", 3, 0), -1) << "an overwrite is refused, not moved";
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::pwrite(fd, "XYZ", 3, 5), -1) << "overlapping the end is refused too";
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::pwrite(fd, "!", 1, 1000), -1) << "a write past the end would leave a hole";
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::pwrite(fd, "ghi", 3, 6), 3) << "a pwrite exactly at the end appends";
  EXPECT_EQ(::lseek(fd, 1, SEEK_SET), 1);
  EXPECT_EQ(::write(fd, "12", 2), -1);
  EXPECT_EQ(errno, EPERM);
  ::close(fd);
  EXPECT_EQ(read_all(a_->file("vm0")), "abcdefghi") << "refused writes changed nothing";
  EXPECT_EQ(read_all(b_->file("vm0")), "abcdefghi");
}

TEST_F(TwoPeers, AnOAppendDescriptorAlwaysAppends) {
  append(a_->file("vm0"), "one\n");
  const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(::lseek(fd, 0, SEEK_SET), 0);
  EXPECT_EQ(::write(fd, "two\n", 4), 4) << "O_APPEND: the file offset does not matter";
  EXPECT_EQ(::pwrite(fd, "three\n", 6, 0), 6) << "Linux appends a pwrite on an O_APPEND descriptor";
  ::close(fd);
  // O_APPEND set later with fcntl counts as well (the kernel sends the
  // descriptor's flags with every write).
  const int fd2 = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd2, 0);
  EXPECT_EQ(::write(fd2, "four\n", 5), -1) << "without O_APPEND a write at offset 0 is refused";
  EXPECT_EQ(errno, EPERM);
  ASSERT_EQ(::fcntl(fd2, F_SETFL, O_APPEND), 0);
  EXPECT_EQ(::write(fd2, "four\n", 5), 5) << std::strerror(errno);
  ASSERT_EQ(::fcntl(fd2, F_SETFL, 0), 0);
  EXPECT_EQ(::pwrite(fd2, "five\n", 5, 0), -1) << "O_APPEND cleared again: refused";
  EXPECT_EQ(errno, EPERM);
  ::close(fd2);
  EXPECT_EQ(read_all(b_->file("vm0")), "one\ntwo\nthree\nfour\n");
}

TEST_F(TwoPeers, DataIsBinarySafe) {
  std::string data;
  for (int round = 0; round < 64; ++round) {
    for (int c = 0; c < 256; ++c) data.push_back(static_cast<char>(c));
  }
  append(a_->file("vm0"), data);
  EXPECT_EQ(read_all(b_->file("vm0")), data);
  struct stat st {};
  ASSERT_EQ(::stat(b_->file("vm0").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
}

TEST_F(TwoPeers, OTruncAndTruncateToZeroReset) {
  append(a_->file("vm0"), "old contents");
  const std::string generation_before = xattr(b_->file("vm0"), "user.ivshmfs.generation");

  const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(::write(fd, "new", 3), 3);
  ::close(fd);
  EXPECT_EQ(read_all(b_->file("vm0")), "new");
  EXPECT_EQ(std::stoull(xattr(b_->file("vm0"), "user.ivshmfs.generation")), std::stoull(generation_before) + 2);

  ASSERT_EQ(::truncate(a_->file("vm0").c_str(), 0), 0) << std::strerror(errno);
  struct stat st {};
  ASSERT_EQ(::stat(b_->file("vm0").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);

  append(a_->file("vm0"), "again");
  const int fd2 = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd2, 0);
  EXPECT_EQ(::ftruncate(fd2, 0), 0) << std::strerror(errno);
  ::close(fd2);
  EXPECT_EQ(read_all(b_->file("vm0")), "");
}

TEST_F(TwoPeers, TruncateToTheLengthIsANoOpAndToAnyOtherNonZeroSizeEPERM) {
  append(a_->file("vm0"), "0123456789");
  const std::string generation = xattr(b_->file("vm0"), "user.ivshmfs.generation");
  EXPECT_EQ(errno_of(::truncate(a_->file("vm0").c_str(), 10)), 0) << "truncate to the current length succeeds";
  EXPECT_EQ(errno_of(::truncate(a_->file("vm0").c_str(), 5)), EPERM);
  EXPECT_EQ(errno_of(::truncate(a_->file("vm0").c_str(), 100)), EPERM);
  const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(errno_of(::ftruncate(fd, 3)), EPERM);
  EXPECT_EQ(errno_of(::ftruncate(fd, 10)), 0);
  ::close(fd);
  EXPECT_EQ(read_all(b_->file("vm0")), "0123456789") << "a refused or no-op truncate changes nothing";
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.generation"), generation) << "no reset happened";
  EXPECT_EQ(errno_of(::truncate(a_->file("vm1").c_str(), 0)), EACCES) << "another peer's file: still refused";
}

TEST_F(TwoPeers, AFullPartitionGivesAShortWriteThenENOSPC) {
  const uint64_t capacity = std::stoull(xattr(a_->file("vm0"), "user.ivshmfs.capacity"));
  ASSERT_GT(capacity, 100U);
  const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const std::string fill(capacity - 10, 'f');
  ASSERT_EQ(::write(fd, fill.data(), fill.size()), static_cast<ssize_t>(fill.size())) << std::strerror(errno);
  const std::string more(100, 'm');
  EXPECT_EQ(::write(fd, more.data(), more.size()), 10) << "short write: only 10 bytes fit";
  EXPECT_EQ(::write(fd, "x", 1), -1);
  EXPECT_EQ(errno, ENOSPC);
  ::close(fd);
  struct stat st {};
  ASSERT_EQ(::stat(b_->file("vm0").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), capacity);
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(dir_a_.path().c_str(), &vfs), 0);
  EXPECT_EQ(vfs.f_bfree, 0U);
  // A reset makes room again.
  ASSERT_EQ(::truncate(a_->file("vm0").c_str(), 0), 0);
  append(a_->file("vm0"), "room");
  EXPECT_EQ(read_all(b_->file("vm0")), "room");
}

// A range fenced off by an earlier takeover (a hole in the data area) lies
// just ahead: a write that crosses it is still committed whole, and readers
// never see the hole's bytes.
TEST_F(TwoPeers, AWriteAcrossAFencedRangeIsCommittedWhole) {
  a_.reset();  // unmount vm0 and release its claim
  {
    auto region = Region::open_path(region_.path(), RegionOpenOptions{true});
    ASSERT_TRUE(region) << region.error().message;
    const PartitionInfo* p = (*region)->find(0);
    ASSERT_NE(p, nullptr);
    ivshmfs_control* c = (*region)->control(*p);
    std::memset((*region)->data(*p), 'Z', 4096);  // what a displaced owner wrote there
    std::atomic_ref<uint64_t>(c->hole_offset).store(10);
    std::atomic_ref<uint64_t>(c->hole_length).store(1000);
  }
  a_ = std::make_unique<Daemon>(Daemon::Config{region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(a_->start()) << "vm0 daemon did not mount again:\n" << a_->log();
  const int fd = ::open(a_->file("vm0").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const std::string first(4, 'a');
  const std::string across(50, 'b');
  ASSERT_EQ(::write(fd, first.data(), first.size()), 4);
  EXPECT_EQ(::write(fd, across.data(), across.size()), 50) << "a write across the fenced range was split";
  ::close(fd);
  EXPECT_EQ(read_all(b_->file("vm0")), first + across) << "the fenced range showed, or bytes went missing";
  const PartitionStat s = region_.stat(0);
  EXPECT_EQ(s.length, 54u);
  EXPECT_EQ(s.fenced, 1000u);
  EXPECT_EQ(s.free, s.capacity - 54 - 1000);
}

TEST_F(TwoPeers, StatShowsCommittedLengthAndLastWriteTime) {
  const auto before = wall_clock_ns();
  append(a_->file("vm0"), "twelve bytes");
  const auto after = wall_clock_ns();
  struct stat st {};
  ASSERT_EQ(::stat(b_->file("vm0").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 12);
  const uint64_t mtime =
      static_cast<uint64_t>(st.st_mtim.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(st.st_mtim.tv_nsec);
  // Commits are stamped with the coarse realtime clock: up to a tick behind.
  constexpr uint64_t kCoarseClockSlack = 100'000'000;
  EXPECT_GE(mtime, before - kCoarseClockSlack);
  EXPECT_LE(mtime, after);
  EXPECT_EQ(std::to_string(mtime), xattr(b_->file("vm0"), "user.ivshmfs.last_write_ns"));
}

TEST_F(TwoPeers, StatfsShowsTheOwnPartition) {
  const uint64_t capacity = std::stoull(xattr(a_->file("vm0"), "user.ivshmfs.capacity"));
  append(a_->file("vm0"), std::string(8192, 'd'));
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(dir_a_.path().c_str(), &vfs), 0);
  EXPECT_EQ(vfs.f_blocks * vfs.f_frsize, capacity);
  EXPECT_EQ(vfs.f_bfree * vfs.f_frsize, capacity - 8192);
  EXPECT_EQ(vfs.f_bavail, vfs.f_bfree);
  // No inode table: df -i shows "-", not "100% used".
  EXPECT_EQ(vfs.f_files, 0U);
  EXPECT_EQ(vfs.f_ffree, 0U);
}

TEST_F(TwoPeers, CreatingRemovingAndRenamingFilesIsEPERM) {
  EXPECT_EQ(open_errno(a_->file("new"), O_WRONLY | O_CREAT), EPERM);
  EXPECT_EQ(errno_of(::mknod(a_->file("node").c_str(), S_IFREG | 0644, 0)), EPERM);
  EXPECT_EQ(errno_of(::mkdir(a_->file("dir").c_str(), 0755)), EPERM);
  EXPECT_EQ(errno_of(::unlink(a_->file("vm0").c_str())), EPERM);
  EXPECT_EQ(errno_of(::unlink(a_->file("vm1").c_str())), EPERM);
  EXPECT_EQ(errno_of(::rmdir(a_->file("follow").c_str())), EPERM);
  EXPECT_EQ(errno_of(::rename(a_->file("vm0").c_str(), a_->file("renamed").c_str())), EPERM);
  EXPECT_EQ(errno_of(::link(a_->file("vm0").c_str(), a_->file("hard").c_str())), EPERM);
  EXPECT_EQ(errno_of(::symlink("vm0", a_->file("soft").c_str())), EPERM);
  EXPECT_EQ(errno_of(::chmod(a_->file("vm0").c_str(), 0600)), EPERM);
  EXPECT_EQ(list_dir(dir_a_.path()).size(), 6U) << "nothing was created";
}

TEST_F(TwoPeers, StatusFileDescribesRegionAndEveryPartition) {
  append(a_->file("vm0"), "12345");
  const std::string status = read_all(a_->file(".status"));
  std::vector<std::string> lines;
  std::istringstream in(status);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 4U) << status;
  EXPECT_EQ(lines[0].rfind("region ", 0), 0U) << lines[0];
  // Two daemons over host files: peers on one host wake each other by futex.
  EXPECT_EQ(lines[3].rfind("wakeups source=futex ", 0), 0U) << lines[3];
  EXPECT_NE(lines[0].find(" backend=" + region_.path() + " "), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find(split_mode() ? " split_pieces=2" : " split_pieces=0"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find(" partitions=2 self=0 state=ok"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1].rfind(
                "partition id=0 file=vm0 self=1 claimed=1 alive=1 owner_pid=" + std::to_string(a_->pid()) + " ", 0),
            0U)
      << lines[1];
  EXPECT_NE(lines[1].find(" length=5 "), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find(" generation=0 "), std::string::npos) << lines[1];
  EXPECT_EQ(lines[2].rfind(
                "partition id=1 file=vm1 self=0 claimed=1 alive=1 owner_pid=" + std::to_string(b_->pid()) + " ", 0),
            0U)
      << lines[2];
  EXPECT_NE(lines[2].find(" length=0 "), std::string::npos) << lines[2];
  for (const auto& line : lines) EXPECT_EQ(line.find("  "), std::string::npos) << "fields split on one space";
}

TEST_F(TwoPeers, ExtendedAttributesDescribeThePartitionAndAreReadOnly) {
  append(a_->file("vm0"), "abc");
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.id"), "0");
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.length"), "3");
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.self"), "0");
  EXPECT_EQ(xattr(a_->file("vm0"), "user.ivshmfs.self"), "1");
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.alive"), "1");
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.claimed"), "1");
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.owner_pid"), std::to_string(a_->pid()));
  EXPECT_EQ(xattr(b_->file("vm0"), "user.ivshmfs.generation"), "0");
  EXPECT_EQ(xattr(b_->file("follow/vm0"), "user.ivshmfs.length"), "3");

  char names[4096];
  const ssize_t n = ::listxattr(b_->file("vm0").c_str(), names, sizeof names);
  ASSERT_GT(n, 0) << std::strerror(errno);
  std::set<std::string> listed;
  for (const char* p = names; p < names + n; p += std::strlen(p) + 1) listed.insert(p);
  for (const char* name :
       {"user.ivshmfs.id", "user.ivshmfs.length", "user.ivshmfs.capacity", "user.ivshmfs.generation",
        "user.ivshmfs.last_write_ns", "user.ivshmfs.owner_pid", "user.ivshmfs.alive", "user.ivshmfs.owner_since_ns"}) {
    EXPECT_EQ(listed.count(name), 1U) << name;
  }
  char small[1];
  EXPECT_EQ(::getxattr(b_->file("vm0").c_str(), "user.ivshmfs.owner_pid", small, sizeof small), -1);
  EXPECT_EQ(errno, ERANGE);
  EXPECT_EQ(::getxattr(b_->file("vm0").c_str(), "user.other", small, sizeof small), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(errno_of(::setxattr(a_->file("vm0").c_str(), "user.ivshmfs.length", "9", 1, 0)), EPERM);
  EXPECT_EQ(errno_of(::removexattr(a_->file("vm0").c_str(), "user.ivshmfs.length")), EPERM);
}

TEST_F(TwoPeers, LargeWritesAndReadsGoThroughWhole) {
  std::string data(3 << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131) >> 7);
  RegionFile big(16 << 20, 2);
  TempDir dir("mnt-big");
  Daemon d({big.path(), dir.path(), 0, {}});
  ASSERT_TRUE(d.start()) << d.log();
  const int fd = ::open(d.file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ::close(fd);
  const int rfd = ::open(d.file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(rfd, 0);
  std::string back(data.size() + 10, '\0');
  std::size_t got = 0;
  while (got < back.size()) {
    const ssize_t n = ::read(rfd, back.data() + got, back.size() - got);
    ASSERT_GE(n, 0) << std::strerror(errno);
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(rfd);
  back.resize(got);
  EXPECT_TRUE(back == data) << "read back " << got << " of " << data.size() << " bytes, contents differ";
}

// A write() is committed whole when the kernel sends it as one request. The
// kernel pins the writer's buffer page by page and a request holds at most
// 256 pages (1 MiB): a buffer starting mid-page is sent whole up to
// 1 MiB - 4095 bytes (1,044,481), and up to 1 MiB when page-aligned. The
// daemon logs every request it receives at trace level: each write below
// must have arrived as exactly one request of its full size, with O_APPEND
// and without, from buffers at every offset in a page.
TEST_F(TwoPeers, AWriteUpToTheGuaranteedSizeArrivesAsOneRequest) {
  RegionFile big(16 << 20, 2);
  TempDir dir("mnt-split");
  Daemon d({big.path(), dir.path(), 0, {"log=trace"}});
  ASSERT_TRUE(d.start()) << d.log();
  const long page = ::sysconf(_SC_PAGESIZE);
  std::vector<char> buffer(static_cast<std::size_t>(3 * page + (1 << 20)));
  // Page-aligned base inside the buffer.
  const auto base = (reinterpret_cast<uintptr_t>(buffer.data()) + static_cast<uintptr_t>(page) - 1) &
                    ~(static_cast<uintptr_t>(page) - 1);
  struct Case {
    std::size_t misalign;
    std::size_t size;
  };
  const std::size_t guaranteed = (1 << 20) - static_cast<std::size_t>(page) + 1;
  const std::vector<Case> cases = {{0, 1 << 20},
                                   {1, guaranteed},
                                   {100, guaranteed},
                                   {static_cast<std::size_t>(page) - 1, guaranteed},
                                   {static_cast<std::size_t>(page) / 2, 1000},
                                   {7, guaranteed - 1}};
  std::size_t expected_length = 0;
  for (const bool use_append : {false, true}) {
    for (const Case& c : cases) {
      ASSERT_EQ(::truncate(d.file("vm0").c_str(), 0), 0);
      const int fd = ::open(d.file("vm0").c_str(), O_WRONLY | O_CLOEXEC | (use_append ? O_APPEND : 0));
      ASSERT_GE(fd, 0);
      char* at = reinterpret_cast<char*>(base) + c.misalign;
      std::memset(at, 'w', c.size);
      const std::string marker = "trace: write " + std::to_string(c.size) + " bytes at 0";
      const auto before = d.log();
      ASSERT_EQ(::write(fd, at, c.size), static_cast<ssize_t>(c.size)) << std::strerror(errno);
      ::close(fd);
      expected_length = c.size;
      // The log line is written before the reply: it is there once write() returned.
      const std::string after = d.log().substr(before.size());
      std::size_t requests = 0;
      for (std::size_t at_pos = after.find("trace: write "); at_pos != std::string::npos;
           at_pos = after.find("trace: write ", at_pos + 1)) {
        ++requests;
      }
      EXPECT_EQ(requests, 1U) << (use_append ? "O_APPEND, " : "") << "buffer at page offset " << c.misalign << ", "
                              << c.size << " bytes: the daemon saw\n"
                              << after;
      EXPECT_NE(after.find(marker), std::string::npos) << after;
      struct stat st {};
      ASSERT_EQ(::stat(d.file("vm0").c_str(), &st), 0);
      EXPECT_EQ(static_cast<std::size_t>(st.st_size), expected_length);
    }
  }
}

// A read-only peer (-o ro), e.g. a host that only watches: it claims no
// partition, shows every file 0444, refuses writes, and still sees what the
// writers commit.
TEST_F(TwoPeers, AReadOnlyPeerClaimsNothingAndSeesEverything) {
  TempDir dir_ro{"mnt-ro"};
  Daemon ro(Daemon::Config{region_.path(), dir_ro.path(), std::nullopt, {"ro"}});
  ASSERT_TRUE(ro.start()) << "read-only daemon did not mount:\n" << ro.log();

  for (const char* name : {"vm0", "vm1"}) {
    struct stat st {};
    ASSERT_EQ(::stat(ro.file(name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode, S_IFREG | 0444) << name;
    for (int flags : {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND, O_WRONLY | O_TRUNC}) {
      const int error = open_errno(ro.file(name), flags);
      EXPECT_TRUE(error == EROFS || error == EACCES) << name << " flags " << std::hex << flags << ": " << error;
    }
    const int error = errno_of(::truncate(ro.file(name).c_str(), 0));
    EXPECT_TRUE(error == EROFS || error == EACCES) << name << ": " << error;
    EXPECT_EQ(xattr(ro.file(name), "user.ivshmfs.self"), "0") << name;
  }
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(dir_ro.path().c_str(), &vfs), 0);
  EXPECT_NE(vfs.f_flag & ST_RDONLY, 0U);
  EXPECT_EQ(vfs.f_bavail, 0U);

  // The writers keep their claims and their files; the read-only peer sees
  // their appends as soon as they return, in files and in the follow view.
  append(a_->file("vm0"), "from vm0\n");
  append(b_->file("vm1"), "from vm1\n");
  EXPECT_EQ(read_all(ro.file("vm0")), "from vm0\n");
  EXPECT_EQ(read_all(ro.file("vm1")), "from vm1\n");
  struct stat st {};
  ASSERT_EQ(::stat(ro.file("vm1").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 9);
  const int fd = ::open(ro.file("follow/vm1").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  char buf[64];
  EXPECT_EQ(::read(fd, buf, sizeof buf), 9);
  ::close(fd);

  const std::string status = read_all(ro.file(".status"));
  EXPECT_NE(status.find(" self=none "), std::string::npos) << status;
  EXPECT_EQ(status.find(" self=1 "), std::string::npos) << "no partition is this peer's own:\n" << status;
  // No own control block to announce what it waits for: it polls.
  EXPECT_NE(status.find("\nwakeups source=polling "), std::string::npos) << status;
  EXPECT_NE(ro.log().find("no partition claimed"), std::string::npos) << ro.log();
  // Claiming nothing, it displaced no one: vm0's owner still writes.
  append(a_->file("vm0"), "still mine\n");
  EXPECT_EQ(read_all(ro.file("vm0")), "from vm0\nstill mine\n");
}

class CustomOwnership : public TwoPeers {
  std::vector<std::string> extra_options_a() override { return {"uid=1234", "gid=5678", "umask=027"}; }
};

TEST_F(CustomOwnership, UidGidAndUmaskApply) {
  struct stat st {};
  ASSERT_EQ(::stat(a_->file("vm0").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0640);
  EXPECT_EQ(st.st_uid, 1234U);
  EXPECT_EQ(st.st_gid, 5678U);
  ASSERT_EQ(::stat(a_->file("vm1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0440);
  ASSERT_EQ(::stat(dir_a_.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0550);
}

}  // namespace
}  // namespace ivshmfs::fstest
