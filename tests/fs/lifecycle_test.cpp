// SPDX-License-Identifier: MIT
// A daemon's life: claiming the partition (and refusing a second daemon),
// releasing it on a clean unmount or signal, SIGKILL and restart without
// losing data, detaching, mount(8) and fstab, the peer id, a region formatted
// anew underneath, and the messages a user sees when something is missing.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ivshmfs/backend.hpp"
#include "mount_support.hpp"

namespace ivshmfs::fstest {
namespace {

class Lifecycle : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto missing = missing_prerequisite()) GTEST_SKIP() << "skipped: " << *missing;
  }
  RegionFile region_;
  TempDir dir_a_{"mnt-a"};
  TempDir dir_b_{"mnt-b"};
};

TEST_F(Lifecycle, ASecondDaemonForTheSameIdIsRefusedWithTheOwnersPid) {
  Daemon first({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(first.start()) << first.log();
  Daemon second({region_.path(), dir_b_.path(), 0, {}});
  EXPECT_FALSE(second.start()) << "a second daemon for vm0 mounted";
  const auto status = second.wait_exit();
  ASSERT_TRUE(status.has_value()) << "the refused daemon did not exit";
  EXPECT_NE(*status, 0);
  const std::string log = second.log();
  EXPECT_NE(log.find("partition 0 is owned by a live writer"), std::string::npos) << log;
  EXPECT_NE(log.find("pid " + std::to_string(first.pid())), std::string::npos) << log;
  EXPECT_NE(log.find(" since "), std::string::npos) << log;
  EXPECT_FALSE(is_mounted(dir_b_.path()));
  // The first daemon is undisturbed.
  append(first.file("vm0"), "still mine");
  EXPECT_EQ(read_all(first.file("vm0")), "still mine");
}

TEST_F(Lifecycle, ACleanUnmountReleasesTheClaim) {
  Daemon d({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(d.start()) << d.log();
  EXPECT_TRUE(region_.stat(0).claimed);
  EXPECT_EQ(region_.stat(0).owner_pid, static_cast<uint64_t>(d.pid()));
  ASSERT_EQ(run_program({"fusermount3", "-u", dir_a_.path()}), 0);
  const auto status = d.wait_exit();
  ASSERT_TRUE(status.has_value()) << "the daemon did not exit after fusermount3 -u";
  EXPECT_EQ(*status, 0) << d.log();
  EXPECT_FALSE(region_.stat(0).claimed);
}

TEST_F(Lifecycle, SigtermAndSigintUnmountAndReleaseTheClaim) {
  for (int sig : {SIGTERM, SIGINT}) {
    Daemon d({region_.path(), dir_a_.path(), 0, {}});
    ASSERT_TRUE(d.start()) << d.log();
    d.signal(sig);
    const auto status = d.wait_exit();
    ASSERT_TRUE(status.has_value()) << "the daemon ignored signal " << sig;
    EXPECT_EQ(*status, 0) << d.log();
    EXPECT_FALSE(is_mounted(dir_a_.path())) << "signal " << sig;
    EXPECT_FALSE(region_.stat(0).claimed) << "signal " << sig;
  }
}

TEST_F(Lifecycle, AfterSigkillARestartedDaemonContinuesAtTheCommittedLength) {
  {
    Daemon d({region_.path(), dir_a_.path(), 0, {}});
    ASSERT_TRUE(d.start()) << d.log();
    append(d.file("vm0"), "before the crash;");
    d.kill9();
    EXPECT_TRUE(region_.stat(0).claimed) << "SIGKILL leaves the claim behind";
  }
  Daemon again({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(again.start()) << "the claim of a killed daemon must be taken over:\n" << again.log();
  EXPECT_EQ(read_all(again.file("vm0")), "before the crash;");
  append(again.file("vm0"), "after");
  EXPECT_EQ(read_all(again.file("vm0")), "before the crash;after");
  EXPECT_EQ(region_.stat(0).owner_pid, static_cast<uint64_t>(again.pid()));
}

TEST_F(Lifecycle, WithoutDashFTheDaemonDetachesAfterMounting) {
  Daemon d({region_.path(), dir_a_.path(), 0, {}, false});
  ASSERT_TRUE(d.start()) << d.log();
  const auto status = d.wait_exit();
  ASSERT_TRUE(status.has_value()) << "the starting process did not exit";
  EXPECT_EQ(*status, 0) << d.log();
  EXPECT_TRUE(is_mounted(dir_a_.path()));
  const auto owner = region_.stat(0);
  EXPECT_TRUE(owner.alive);
  EXPECT_NE(owner.owner_pid, static_cast<uint64_t>(d.pid())) << "the detached child owns the partition";
  append(d.file("vm0"), "detached");
  EXPECT_EQ(read_all(d.file("vm0")), "detached");
  unmount(dir_a_.path());
  EXPECT_TRUE(eventually([&] { return !region_.stat(0).claimed; })) << "the detached daemon kept its claim";
}

TEST_F(Lifecycle, WithoutDashFAFailureIsReportedBeforeDetaching) {
  Daemon first({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(first.start()) << first.log();
  Daemon second({region_.path(), dir_b_.path(), 0, {}, false});
  EXPECT_FALSE(second.start());
  const auto status = second.wait_exit();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 1);
  EXPECT_NE(second.log().find("owned by a live writer"), std::string::npos) << second.log();
}

TEST_F(Lifecycle, ARegionFormattedAnewUnderneathIsNoLongerServed) {
  Daemon d({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(d.start()) << d.log();
  append(d.file("vm0"), "old format");
  region_.format(1 << 20, 2, true);
  const bool noticed = eventually([&] {
    const int fd = ::open(d.file("vm0").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == EIO;
    char buf[16];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    const int err = errno;
    ::close(fd);
    return n < 0 && err == EIO;
  });
  EXPECT_TRUE(noticed) << "reads still succeed after the region was formatted anew";
  const int fd = ::open(d.file("vm0").c_str(), O_WRONLY | O_CLOEXEC);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_NE(d.log().find("formatted anew"), std::string::npos) << d.log();
  EXPECT_NE(read_all(d.file(".status")).find("state=reformatted"), std::string::npos);
  // Nothing was written into the new format on our behalf.
  EXPECT_FALSE(region_.stat(0).claimed);
}

TEST_F(Lifecycle, TheCreateOptionMakesAndFormatsAMissingHostFile) {
  const std::string path = "/dev/shm/" + unique_name("created");
  Daemon d({path, dir_a_.path(), 1, {"create", "size=2M", "partitions=3"}});
  ASSERT_TRUE(d.start()) << d.log();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 2 << 20);
  EXPECT_TRUE(::access(d.file("vm2").c_str(), R_OK) == 0) << "three partitions";
  append(d.file("vm1"), "created");
  d.stop();
  // A second start with create keeps the existing region and its data.
  Daemon again({path, dir_a_.path(), 1, {"create", "size=2M", "partitions=3"}});
  ASSERT_TRUE(again.start()) << again.log();
  EXPECT_EQ(read_all(again.file("vm1")), "created");
  again.stop();
  ::unlink(path.c_str());
}

TEST_F(Lifecycle, AMissingRegionFileWithoutCreateIsAnError) {
  Daemon d({"/dev/shm/" + unique_name("missing"), dir_a_.path(), 0, {}});
  EXPECT_FALSE(d.start());
  ASSERT_TRUE(d.wait_exit().has_value());
  EXPECT_EQ(d.exit_status(), 1);
  EXPECT_NE(d.log().find("no such file"), std::string::npos) << d.log();
}

TEST_F(Lifecycle, AnIdOutsideTheRegionIsRefused) {
  Daemon d({region_.path(), dir_a_.path(), 7, {}});
  EXPECT_FALSE(d.start());
  ASSERT_TRUE(d.wait_exit().has_value());
  EXPECT_EQ(d.exit_status(), 1);
  EXPECT_NE(d.log().find("peer id 7 has no partition in this region (partitions: 0, 1)"), std::string::npos) << d.log();
}

TEST_F(Lifecycle, ThePeerIdComesFromTheHostnameWithoutDashOId) {
  for (const auto& [hostname, id] : {std::pair{"vm1", 1U}, std::pair{"vm0-web", 0U}, std::pair{"1_alpha", 1U}}) {
    Daemon d({region_.path(), dir_a_.path(), std::nullopt, {}, true, hostname});
    ASSERT_TRUE(d.start()) << hostname << ":\n" << d.log();
    EXPECT_NE(d.log().find("peer id " + std::to_string(id) + " (from hostname '" + hostname + "')"), std::string::npos)
        << d.log();
    EXPECT_NE(read_all(d.file(".status")).find(" self=" + std::to_string(id) + " "), std::string::npos);
    d.stop();
  }
  Daemon nameless({region_.path(), dir_a_.path(), std::nullopt, {}, true, "buildhost"});
  EXPECT_FALSE(nameless.start());
  ASSERT_TRUE(nameless.wait_exit().has_value());
  EXPECT_NE(nameless.log().find("pass -o id=N"), std::string::npos) << nameless.log();
}

// A host file has no doorbell: the daemon polls, and says so and why, with
// or without -o nodoorbell (doorbells are tested in guests: guest_doorbell).
TEST_F(Lifecycle, OnAHostFileTheDaemonWakesByFutexUnlessToldToPoll) {
  // No doorbell on a host file; peers on this host wake each other by futex.
  for (const std::vector<std::string>& more : {std::vector<std::string>{}, std::vector<std::string>{"nodoorbell"}}) {
    Daemon d({region_.path(), dir_a_.path(), 0, more});
    ASSERT_TRUE(d.start()) << d.log();
    const std::string log = d.log();
    EXPECT_NE(log.find("wake-ups: futex on peers' control blocks"), std::string::npos) << log;
    EXPECT_EQ(log.find("wake-ups: doorbells"), std::string::npos) << log;
    EXPECT_EQ(log.find("wake-ups: polling"), std::string::npos) << log;
    d.stop();
  }
  // -o nofutex, and a read-only peer (it owns no control block to announce
  // in): polling, with the reason.
  for (const auto& [option, why] : {std::pair<std::string, std::string>{"nofutex", "(-o nofutex)"},
                                    std::pair<std::string, std::string>{"ro", "(a read-only peer cannot announce"}}) {
    Daemon d({region_.path(), dir_a_.path(), 0, {option}});
    ASSERT_TRUE(d.start()) << d.log();
    const std::string log = d.log();
    const auto line = log.find("wake-ups: polling peers' control blocks every ");
    EXPECT_NE(line, std::string::npos) << log;
    EXPECT_NE(log.find(why, line == std::string::npos ? 0 : line), std::string::npos) << log;
    EXPECT_EQ(log.find("wake-ups: futex"), std::string::npos) << log;
    d.stop();
  }
}

TEST_F(Lifecycle, WithoutABackendTheMessageSaysWhatToPass) {
  if (find_default_backend()) GTEST_SKIP() << "skipped: this system has an ivshmem device";
  Daemon d({"", dir_a_.path(), 0, {}});
  EXPECT_FALSE(d.start());
  ASSERT_TRUE(d.wait_exit().has_value());
  EXPECT_EQ(d.exit_status(), 1);
  EXPECT_NE(d.log().find("no BACKEND given and no ivshmem device found"), std::string::npos) << d.log();
  EXPECT_NE(d.log().find("/dev/shm/ivshm"), std::string::npos) << d.log();
}

TEST_F(Lifecycle, BadOptionsAreRefusedWithTheirName) {
  const std::string log = "/tmp/" + unique_name("opts") + ".txt";
  EXPECT_EQ(run_program({IVSHMFS_PATH, "-f", "-o", "id=zero", region_.path(), dir_a_.path()}, log), 1);
  EXPECT_EQ(run_program({IVSHMFS_PATH, "-f", "-o", "id=0,log=loud", region_.path(), dir_a_.path()}, log), 1);
  EXPECT_EQ(run_program({IVSHMFS_PATH, "-f", "-o", "id=0,no_such_option", region_.path(), dir_a_.path()}, log), 1);
  const std::string text = read_text(log);
  EXPECT_NE(text.find("bad value 'zero' for -o id"), std::string::npos) << text;
  EXPECT_NE(text.find("bad value 'loud' for -o log"), std::string::npos) << text;
  EXPECT_NE(text.find("no_such_option"), std::string::npos) << text;
  EXPECT_FALSE(is_mounted(dir_a_.path()));
  ::unlink(log.c_str());
}

TEST_F(Lifecycle, HelpAndVersion) {
  const std::string log = "/tmp/" + unique_name("help") + ".txt";
  EXPECT_EQ(run_program({IVSHMFS_PATH, "--help"}, log), 0);
  const std::string help = read_text(log);
  for (const char* option : {"id=N", "create", "size=SIZE", "partitions=N", "log=LEVEL",
                             "uid=", "gid=", "umask=", "poll_min_us=", "poll_max_ms=", "nodoorbell", "allow_other"}) {
    EXPECT_NE(help.find(option), std::string::npos) << option;
  }
  ::unlink(log.c_str());
  EXPECT_EQ(run_program({IVSHMFS_PATH, "--version"}, log), 0);
  EXPECT_NE(read_text(log).find("ivshmfs version"), std::string::npos);
  ::unlink(log.c_str());
}

// mount(8) runs mount.fuse3 for fuse.ivshmfs, which runs "ivshmfs" through
// /bin/sh with PATH removed from the environment: the binary must sit in the
// shell's default PATH. The test puts it there in a private mount namespace
// (a tmpfs over /usr/local/sbin), and does all its work inside that namespace.
int run_in_mount_namespace(const std::string& script, const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {"unshare",
                                   "--mount",
                                   "--propagation",
                                   "private",
                                   "sh",
                                   "-euc",
                                   "mount -t tmpfs ivshmfs-test /usr/local/sbin\n"
                                   "ln -s \"$1\" /usr/local/sbin/ivshmfs\n" +
                                       script,
                                   "sh",
                                   IVSHMFS_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv, log);
}

bool have_mount_tools() { return ::access("/usr/bin/mount", X_OK) == 0 && ::access("/usr/bin/unshare", X_OK) == 0; }

TEST_F(Lifecycle, MountDashTFuseIvshmfsWorks) {
  if (!have_mount_tools()) GTEST_SKIP() << "skipped: mount(8) or unshare(1) is not installed";
  const std::string log = "/tmp/" + unique_name("mount") + ".txt";
  const std::string script =
      "mount -t fuse.ivshmfs \"$2\" \"$3\" -o id=1,allow_other,poll_max_ms=20\n"
      "grep -q \" $3 .* fuse.ivshmfs \" /proc/self/mountinfo\n"
      "printf 'via mount(8)' >> \"$3/vm1\"\n"
      "test \"$(cat \"$3/vm1\")\" = 'via mount(8)'\n"
      "grep -q '^partition id=1 .* owner_pid=[1-9]' \"$3/.status\"\n"
      "umount \"$3\"\n";
  EXPECT_EQ(run_in_mount_namespace(script, {region_.path(), dir_a_.path()}, log), 0) << read_text(log);
  EXPECT_TRUE(eventually([&] { return !region_.stat(1).claimed; })) << "the daemon kept its claim after umount";
  EXPECT_EQ(region_.stat(1).length, 12U);
  ::unlink(log.c_str());
}

TEST_F(Lifecycle, AnFstabEntryWorks) {
  if (!have_mount_tools()) GTEST_SKIP() << "skipped: mount(8) or unshare(1) is not installed";
  const std::string fstab = "/tmp/" + unique_name("fstab");
  {
    std::ofstream out(fstab);
    out << region_.path() << " " << dir_a_.path() << " fuse.ivshmfs id=0,allow_other,nofail,noauto 0 0\n";
  }
  const std::string log = "/tmp/" + unique_name("mount") + ".txt";
  const std::string script =
      "mount --fstab \"$2\" \"$3\"\n"
      "grep -q ' self=0 ' \"$3/.status\"\n"
      "printf fstab >> \"$3/vm0\"\n"
      "umount \"$3\"\n";
  EXPECT_EQ(run_in_mount_namespace(script, {fstab, dir_a_.path()}, log), 0) << read_text(log);
  EXPECT_TRUE(eventually([&] { return !region_.stat(0).claimed; }));
  EXPECT_EQ(region_.stat(0).length, 5U);
  ::unlink(fstab.c_str());
  ::unlink(log.c_str());
}

// A backend truncated under running daemons used to kill them with SIGBUS.
// Now every access to what is gone fails with EIO, the daemons log why and
// stay up, and SIGTERM still unmounts cleanly.
TEST_F(Lifecycle, ABackendTruncatedUnderRunningDaemonsGivesEioAndTheyStayUp) {
  Daemon a({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(a.start()) << a.log();
  Daemon b({region_.path(), dir_b_.path(), 1, {}});
  ASSERT_TRUE(b.start()) << b.log();
  append(a.file("vm0"), std::string(20000, 'a'));
  append(b.file("vm1"), std::string(20000, 'b'));
  ASSERT_EQ(read_all(a.file("vm1")).size(), 20000U);

  for (const std::string& file : region_.files()) {
    ASSERT_EQ(::truncate(file.c_str(), IVSHMFS_PAGE_SIZE), 0) << file << ": " << std::strerror(errno);
  }

  // A read of a peer's partition (copied) and of the own one (straight from
  // the mapping), and an append: each fails with EIO, none kills the daemon.
  auto read_errno = [](const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    const int err = n < 0 ? errno : 0;
    ::close(fd);
    return err;
  };
  EXPECT_EQ(read_errno(a.file("vm1")), EIO) << a.log();
  EXPECT_EQ(read_errno(a.file("vm0")), EIO) << a.log();
  {
    const int fd = ::open(b.file("vm1").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
      const std::string more(8192, 'c');
      EXPECT_EQ(::write(fd, more.data(), more.size()), -1) << "an append into a truncated backend succeeded";
      EXPECT_TRUE(errno == EIO || errno == ENOSPC) << std::strerror(errno);
      ::close(fd);
    }
  }
  for (Daemon* d : {&a, &b}) {
    EXPECT_EQ(::kill(d->pid(), 0), 0) << "the daemon died:\n" << d->log();
    EXPECT_FALSE(d->exit_status().has_value()) << d->log();
    EXPECT_TRUE(is_mounted(d->mountpoint()));
  }
  EXPECT_TRUE(eventually([&] { return a.log().find("shrank") != std::string::npos; })) << a.log();
  for (Daemon* d : {&a, &b}) {
    d->signal(SIGTERM);
    const auto status = d->wait_exit();
    ASSERT_TRUE(status.has_value()) << "the daemon ignored SIGTERM:\n" << d->log();
    EXPECT_EQ(*status, 0) << d->log();
    EXPECT_FALSE(is_mounted(d->mountpoint()));
  }
}

// A peer's partition left mid-reset (its owner killed inside a reset leaves
// the generation odd): reads of it fail at once with EAGAIN instead of
// spinning, .status marks it, and the other partitions work on.
TEST_F(Lifecycle, APartitionLeftMidResetIsReportedAndReadsFailWithEagain) {
  Daemon d({region_.path(), dir_a_.path(), 0, {}});
  ASSERT_TRUE(d.start()) << d.log();
  append(d.file("vm0"), "still fine");
  {
    auto region = Region::open_path(region_.path(), RegionOpenOptions{true});
    ASSERT_TRUE(region.ok()) << region.error().message;
    const PartitionInfo* p = (*region)->find(1);
    ASSERT_NE(p, nullptr);
    std::atomic_ref<uint64_t>((*region)->control(*p)->generation).store(7, std::memory_order_release);
  }
  const int fd = ::open(d.file("vm1").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[64];
    EXPECT_EQ(::read(fd, buf, sizeof buf), -1) << "a read of a partition mid-reset returned data";
    EXPECT_EQ(errno, EAGAIN) << std::strerror(errno);
    ::close(fd);
  } else {
    EXPECT_EQ(errno, EAGAIN) << std::strerror(errno);
  }
  const std::string status = read_all(d.file(".status"));
  EXPECT_NE(status.find("partition id=1 "), std::string::npos) << status;
  const auto line1 = status.substr(status.find("partition id=1 "));
  EXPECT_NE(line1.substr(0, line1.find('\n')).find("mid_reset=1"), std::string::npos) << status;
  EXPECT_EQ(read_all(d.file("vm0")), "still fine");
  EXPECT_EQ(::kill(d.pid(), 0), 0) << d.log();
}

}  // namespace
}  // namespace ivshmfs::fstest
