// SPDX-License-Identifier: MIT
// What the library does when it cannot trust its surroundings: a backend that
// shrinks under a mapping (SIGBUS), a sparse file on a full filesystem,
// FIFOs and other files that are not regions, a backend that would become a
// standard descriptor, and regions that implicit formatting must leave alone.
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <fstream>

#include "ivshmfs/ivshmfs.h"
#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes_at(const std::string& path, uint64_t offset, const void* data, std::size_t n) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::pwrite(fd, data, n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
}

void truncate_to(const std::string& path, uint64_t size) {
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(size)), 0) << path << ": " << std::strerror(errno);
}

// ---------------------------------------------------------------------------
// SIGBUS: the backing file shrinks under the mapping

TEST(MappingGuard, AReadOfATruncatedRegionFailsWithEioInsteadOfSigbus) {
  TempFile file("shrink");
  format_file(file.path(), 1 << 20, 2);
  auto region = open_region(file.path(), false);
  ASSERT_TRUE(region);
  {
    auto writer_region = open_region(file.path(), true);
    auto writer = PartitionWriter::claim(writer_region, 1, ClaimOptions{{}, std::chrono::milliseconds(0), false});
    ASSERT_TRUE(writer.ok()) << writer.error().message;
    std::vector<std::byte> data(3 * 4096, std::byte{0x5a});
    ASSERT_TRUE((*writer)->append(data).ok());
  }
  std::vector<std::byte> out(3 * 4096);
  auto before = region->read(1, 0, out);
  ASSERT_TRUE(before.ok()) << before.error().message;
  EXPECT_EQ(*before, out.size());

  truncate_to(file.path(), IVSHMFS_PAGE_SIZE);  // the header survives, every data page is gone
  auto after = region->read(1, 0, out);
  ASSERT_FALSE(after.ok()) << "a read of pages the file no longer has succeeded";
  EXPECT_EQ(after.error().negative_errno(), -EIO) << after.error().message;
  EXPECT_NE(after.error().message.find("shrank"), std::string::npos) << after.error().message;
  EXPECT_NE(after.error().message.find(file.path()), std::string::npos) << after.error().message;
  EXPECT_TRUE(region->mapping_lost());
  // Every later access says the same; nothing crashes.
  auto view = region->view(1, 0, 16);
  ASSERT_FALSE(view.ok());
  EXPECT_EQ(view.error().negative_errno(), -EIO);
  auto format = region->check_format();
  ASSERT_FALSE(format.ok());
  EXPECT_NE(format.error().message.find("shrank"), std::string::npos) << format.error().message;
}

TEST(MappingGuard, AnAppendIntoATruncatedRegionFailsAndPublishesNothing) {
  TempFile file("shrink-append");
  format_file(file.path(), 1 << 20, 2);
  auto region = open_region(file.path(), true);
  auto writer = PartitionWriter::claim(region, 0, ClaimOptions{{}, std::chrono::milliseconds(0), false});
  ASSERT_TRUE(writer.ok()) << writer.error().message;
  ASSERT_TRUE((*writer)->append(as_bytes("before")).ok());
  truncate_to(file.path(), IVSHMFS_PAGE_SIZE);
  std::vector<std::byte> record(8192, std::byte{1});
  auto n = (*writer)->append(record);
  ASSERT_FALSE(n.ok()) << "an append into pages the file no longer has succeeded";
  EXPECT_EQ(n.error().negative_errno(), -EIO) << n.error().message;
  auto s = region->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 6u) << "the failed append published its length";
  // A reservation's commit publishes nothing either.
  auto room = (*writer)->reserve(16);
  EXPECT_FALSE(room.ok() && room->commit(16) != 0) << "a commit into a lost mapping published";
}

// Without a sanitizer the fault reaches the default action: killed by SIGBUS.
// AddressSanitizer's own handler, which ours chains to, reports it and ends
// the process its own way (abort_on_error: SIGABRT; else exit 1).
bool killed_by_sigbus(int status) {
#if defined(__SANITIZE_ADDRESS__)
  return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
#else
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS;
#endif
}

TEST(MappingGuard, ASigbusOutsideRegisteredMappingsStillKillsTheProcess) {
  TempFile file("not-ours", 0);
  TempFile region_file("ours");
  format_file(region_file.path(), 1 << 20, 2);
  auto region = open_region(region_file.path(), false);  // installs the handler
  ASSERT_TRUE(region);
  EXPECT_EXIT(
      {
        const int fd = ::open(file.path().c_str(), O_RDWR);
        if (fd < 0 || ::ftruncate(fd, 8192) != 0) _exit(3);
        auto* p = static_cast<volatile char*>(::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        if (p == MAP_FAILED || ::ftruncate(fd, 0) != 0) _exit(4);
        p[4096] = 1;  // past the end of the file: SIGBUS, not a region's
        _exit(0);
      },
      killed_by_sigbus, "");
}

// A tmpfs of 1 MiB, mounted for the test and unmounted after it.
class TinyTmpfs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "skipped: mounting a tmpfs needs root";
    char tmpl[] = "/tmp/ivshmfs-tinyfs-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=1M") != 0) {
      const int err = errno;
      ::rmdir(dir_.c_str());
      dir_.clear();
      GTEST_SKIP() << "skipped: cannot mount a tmpfs: " << std::strerror(err);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  std::string dir_;
  bool mounted_ = false;
};

TEST_F(TinyTmpfs, ClaimingAPartitionOfASparseRegionOnAFullTmpfsFailsWithEnospc) {
  const std::string path = dir_ + "/region";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4 << 20), 0);  // sparse: 4 MiB on a 1 MiB filesystem
  ::close(fd);
  {
    auto backend = Backend::open(path, BackendOptions{true, false, 0});
    ASSERT_TRUE(backend.ok()) << backend.error().message;
    ASSERT_TRUE(Region::format(**backend, FormatOptions{2, false}).ok());
  }
  auto region = open_region(path, true);
  ASSERT_TRUE(region);
  auto writer = PartitionWriter::claim(region, 0, ClaimOptions{{}, std::chrono::milliseconds(0), false});
  ASSERT_FALSE(writer.ok()) << "claimed 2 MiB of a 1 MiB filesystem";
  EXPECT_EQ(writer.error().negative_errno(), -ENOSPC) << writer.error().message;
  EXPECT_NE(writer.error().message.find(path), std::string::npos) << writer.error().message;
  auto s = region->stat(0);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->claimed) << "a failed claim left the partition claimed";
}

TEST_F(TinyTmpfs, CreatingARegionLargerThanTheFilesystemIsRefusedWithTheFiguresAndLeavesNothing) {
  const std::string path = dir_ + "/region";
  RegionOpenOptions options;
  options.writable = true;
  options.create = true;
  options.create_size = 4 << 20;
  auto region = Region::open_path(path, options);
  ASSERT_FALSE(region.ok());
  EXPECT_EQ(region.error().negative_errno(), -ENOSPC) << region.error().message;
  EXPECT_NE(region.error().message.find("4 MiB"), std::string::npos) << region.error().message;
  EXPECT_NE(region.error().message.find("free"), std::string::npos) << region.error().message;
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "the refused create left " << path << " behind";
}

// A page of the claimed partition loses its backing later (a hole punched
// in it) while the filesystem is full: the append's copy faults, and the
// error says ENOSPC, not "shrank" (the file keeps its size).
TEST_F(TinyTmpfs, AnAppendIntoAHoleOnAFullTmpfsFailsWithEnospc) {
  const std::string path = dir_ + "/region";
  format_file(path, 256 << 10, 1);
  auto region = open_region(path, true);
  ASSERT_TRUE(region);
  auto writer = PartitionWriter::claim(region, 0, ClaimOptions{{}, std::chrono::milliseconds(0), false});
  ASSERT_TRUE(writer.ok()) << writer.error().message;
  ASSERT_TRUE((*writer)->append(as_bytes("kept")).ok());
  {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    const off_t data = static_cast<off_t>(region->partitions().front().data_offset);
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, data + 4096, 64 << 10), 0)
        << std::strerror(errno);
    ::close(fd);
  }
  // Fill the filesystem, so the hole cannot get its pages back.
  const std::string filler = dir_ + "/filler";
  const int fd = ::open(filler.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  std::vector<char> chunk(4096, 'f');
  while (::write(fd, chunk.data(), chunk.size()) > 0) {
  }
  ::close(fd);
  std::vector<std::byte> record(16 << 10, std::byte{2});
  auto n = (*writer)->append(record);
  ASSERT_FALSE(n.ok()) << "an append into an unbackable hole succeeded";
  EXPECT_EQ(n.error().negative_errno(), -ENOSPC) << n.error().message;
  EXPECT_NE(n.error().message.find("no space"), std::string::npos) << n.error().message;
  auto s = region->snapshot(0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->length, 4u) << "the failed append published its length";
  ::unlink(filler.c_str());
}

// ---------------------------------------------------------------------------
// Files that are not regions; descriptors 0-2

TEST(Backends, AFifoIsRefusedAtOnceInsteadOfBlocking) {
  const std::string path = "/tmp/ivshmfs-test-fifo-" + std::to_string(::getpid());
  ::unlink(path.c_str());
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  for (bool writable : {false, true}) {
    auto backend = Backend::open(path, BackendOptions{writable, false, 0});
    ASSERT_FALSE(backend.ok());
    EXPECT_NE(backend.error().message.find("FIFO"), std::string::npos) << backend.error().message;
  }
  ::unlink(path.c_str());
  auto dir = Backend::open("/tmp", BackendOptions{false, false, 0});
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.error().message.find("directory"), std::string::npos) << dir.error().message;
}

TEST(Backends, ABackendThatWouldBeAStandardDescriptorIsRefusedAndEnsureReopensThem) {
  TempFile file("stdfd");
  format_file(file.path(), 64 << 10, 2);
  const auto before = file_bytes(file.path());
  EXPECT_EXIT(
      {
        ::close(STDIN_FILENO);
        auto backend = Backend::open(file.path(), BackendOptions{true, false, 0});
        if (backend.ok()) _exit(1);
        if (backend.error().message.find("standard descriptor") == std::string::npos) _exit(2);
        ::close(STDIN_FILENO);
        ::close(STDERR_FILENO);
        if (!ensure_standard_descriptors().ok()) _exit(3);
        if (::fcntl(STDIN_FILENO, F_GETFD) < 0 || ::fcntl(STDERR_FILENO, F_GETFD) < 0) _exit(4);
        auto again = Backend::open(file.path(), BackendOptions{true, false, 0});
        if (!again.ok()) _exit(5);
        _exit(0);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EQ(file_bytes(file.path()), before) << "the region changed";
}

// ---------------------------------------------------------------------------
// Implicit formatting: only a blank region

struct Damage {
  const char* what;
  uint64_t offset;
  uint64_t value;
};

class ImplicitFormat : public ::testing::TestWithParam<Damage> {};

TEST_P(ImplicitFormat, CreateNeverOverwritesARegionThatIsNotBlank) {
  const Damage& damage = GetParam();
  TempFile file("damaged");
  format_file(file.path(), 64 << 10, 2);
  {
    auto region = open_region(file.path(), true);
    auto writer = PartitionWriter::claim(region, 0, ClaimOptions{{}, std::chrono::milliseconds(0), false});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->append(as_bytes("peer data")).ok());
  }
  write_bytes_at(file.path(), damage.offset, &damage.value, sizeof damage.value);
  const auto before = file_bytes(file.path());

  RegionOpenOptions options;
  options.writable = true;
  options.create = true;
  options.create_size = 64 << 10;
  auto region = Region::open_path(file.path(), options);
  ASSERT_FALSE(region.ok()) << damage.what << ": opened with create";
  EXPECT_NE(region.error().message.find(file.path()), std::string::npos) << region.error().message;
  EXPECT_EQ(file_bytes(file.path()), before) << damage.what << ": the region was overwritten";

  // The C API's create flag goes the same way.
  ivshmfs_open_options c_options{file.path().c_str(), IVSHMFS_OPEN_WRITE | IVSHMFS_OPEN_CREATE, 0, 64 << 10, 2};
  ivshmfs_region* handle = nullptr;
  EXPECT_LT(ivshmfs_open(&c_options, &handle), 0) << damage.what;
  if (handle != nullptr) ivshmfs_close(handle);
  EXPECT_FALSE(std::string(ivshmfs_last_error()).empty());
  EXPECT_EQ(file_bytes(file.path()), before) << damage.what << ": the C API overwrote the region";
}

INSTANTIATE_TEST_SUITE_P(Damages, ImplicitFormat,
                         ::testing::Values(Damage{"magic missing, the rest intact", 0, 0},
                                           Damage{"one magic byte changed", 0, IVSHMFS_MAGIC ^ 0xff},
                                           Damage{"bad magic", 0, 0x1122334455667788ULL},
                                           Damage{"another layout version", 8, 99}),
                         [](const auto& param) { return "case" + std::to_string(param.index); });

TEST(ImplicitFormat, ABlankRegionIsFormattedAndAMissingMagicMessageSaysWhy) {
  TempFile file("blank", 64 << 10);
  RegionOpenOptions options;
  options.writable = true;
  options.create = true;
  auto region = Region::open_path(file.path(), options);
  ASSERT_TRUE(region.ok()) << region.error().message;
  EXPECT_EQ((*region)->info().partition_count, 4u);

  TempFile damaged("nomagic", 64 << 10);
  const uint64_t stray = 7;
  write_bytes_at(damaged.path(), 200, &stray, sizeof stray);
  auto refused = Region::open_path(damaged.path(), options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("not blank"), std::string::npos) << refused.error().message;
  EXPECT_NE(refused.error().message.find("--force"), std::string::npos) << refused.error().message;
}

TEST(ImplicitFormat, AFailedCreateRemovesTheFileItCreatedAndOnlyThat) {
  TempFile file("too-small");  // not created
  RegionOpenOptions options;
  options.writable = true;
  options.create = true;
  options.create_size = 4096;  // too small for a region
  options.create_partitions = 2;
  auto region = Region::open_path(file.path(), options);
  ASSERT_FALSE(region.ok());
  EXPECT_NE(::access(file.path().c_str(), F_OK), 0) << "the failed create left its file behind";

  TempFile existing("existing", 4096);  // an existing file is never removed
  auto again = Region::open_path(existing.path(), options);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(::access(existing.path().c_str(), F_OK), 0) << "a failed create removed a file it did not create";
}

TEST(ImplicitFormat, ACorruptedMagicUnderAnOpenRegionIsReportedAsCorruptNotReformatted) {
  TempFile file("magic");
  format_file(file.path(), 64 << 10, 2);
  auto region = open_region(file.path(), false);
  ASSERT_TRUE(region);
  const uint64_t bad = IVSHMFS_MAGIC ^ 0x0100;
  write_bytes_at(file.path(), 0, &bad, sizeof bad);
  auto r = region->check_format();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::corrupt_header) << r.error().message;
  EXPECT_EQ(r.error().message.find("formatted anew"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("corrupt"), std::string::npos) << r.error().message;
  // A fresh open says the same.
  auto fresh = Region::open_path(file.path(), RegionOpenOptions{});
  ASSERT_FALSE(fresh.ok());
  EXPECT_EQ(fresh.error().code, Errc::bad_magic) << fresh.error().message;
  EXPECT_NE(fresh.error().message.find("corrupt header: magic"), std::string::npos) << fresh.error().message;
}

// ---------------------------------------------------------------------------
// Read-only peers

TEST(ReadOnly, AReaderOpensAndMapsReadOnlyAndWorksOnAReadOnlyFile) {
  if (::geteuid() != 0) GTEST_SKIP() << "skipped: a read-only bind mount needs root";
  char tmpl[] = "/tmp/ivshmfs-rofs-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  ASSERT_EQ(::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1M"), 0) << std::strerror(errno);
  const std::string path = dir + "/region";
  format_file(path, 64 << 10, 2);
  {
    auto region = open_region(path, true);
    auto writer = PartitionWriter::claim(region, 1, ClaimOptions{{}, std::chrono::milliseconds(0), false});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->append(as_bytes("seen read-only")).ok());
  }
  ASSERT_EQ(::mount(nullptr, dir.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr), 0) << std::strerror(errno);
  auto region = open_region(path, false);
  EXPECT_TRUE(region);
  if (region) {
    EXPECT_FALSE(region->backends().front()->writable());
    std::vector<std::byte> out(64);
    auto n = region->read(1, 0, out);
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ(as_string(std::span(out).first(*n)), "seen read-only");
  }
  RegionOpenOptions rw;
  rw.writable = true;
  auto refused = Region::open_path(path, rw);
  EXPECT_FALSE(refused.ok()) << "a read-write open of a read-only file succeeded";
  region.reset();
  ::umount2(dir.c_str(), MNT_DETACH);
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace ivshmfs::test
