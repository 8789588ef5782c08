// SPDX-License-Identifier: MIT
// Real programs against two mounted views (vm0 writes its file in one mount,
// the other mount reads it): the programs that seek back and overwrite get
// the documented error (EPERM) and a non-zero exit, never success with wrong
// data; the programs that append keep working. Every outcome is asserted
// exactly: exit status, and the partition's bytes as the peer reads them.
// A program missing on this machine makes its test report "skipped" with
// the Debian package that provides it (scripts/setup.sh installs them all).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mount_support.hpp"

namespace ivshmfs::fstest {
namespace {

bool have(const std::string& program) {
  return run_program({"sh", "-c", "command -v " + program + " >/dev/null 2>&1"}) == 0;
}

#define REQUIRE_PROGRAM(program, package)                                                                             \
  do {                                                                                                                \
    if (!have(program)) GTEST_SKIP() << "skipped: " program " is not installed (Debian package " << (package) << ")"; \
  } while (0)

class Programs : public TwoPeers {
 protected:
  Programs() : TwoPeers(16 << 20, 2) {}

  void SetUp() override {
    TwoPeers::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    work_ = std::make_unique<TempDir>("work");
    log_ = work_->path() + "/output.txt";
  }
  void TearDown() override {
    if (work_) run_program({"rm", "-rf", work_->path()});
    work_.reset();
    TwoPeers::TearDown();
  }

  // Runs a shell script with $A (vm0's mount), $B (vm1's mount) and $T (a
  // scratch directory) set; returns its exit status, its output in output_.
  int sh(const std::string& script) {
    ::unlink(log_.c_str());
    const int status = run_program({"sh", "-c", script}, log_,
                                   {"A=" + dir_a_.path(), "B=" + dir_b_.path(), "T=" + work_->path(), "LC_ALL=C"});
    output_ = read_text(log_);
    return status;
  }
  [[nodiscard]] std::string scratch(const std::string& name) const { return work_->path() + "/" + name; }
  static void write_file(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
  }
  // vm0's bytes as the other peer reads them.
  std::string peer_view() { return read_all(b_->file("vm0")); }

  std::unique_ptr<TempDir> work_;
  std::string log_;
  std::string output_;
};

std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 2654435761U + seed) >> 13);
  return s;
}

// ---------------------------------------------------------------------------
// Programs that overwrite: the documented error, a non-zero exit, no change.

TEST_F(Programs, TarAppendingToAnArchiveFailsAndLeavesItIntact) {
  REQUIRE_PROGRAM("tar", "tar");
  write_file(scratch("first"), "first member\n");
  write_file(scratch("second"), "second member\n");
  ASSERT_EQ(sh("cd \"$T\" && tar cf \"$A/vm0\" first"), 0) << output_;
  const std::string archive = peer_view();
  ASSERT_EQ(sh("cd \"$T\" && tar tf \"$B/vm0\""), 0) << output_;
  EXPECT_EQ(output_, "first\n");
  // tar rf seeks back over the end-of-archive blocks to write the member.
  EXPECT_EQ(sh("cd \"$T\" && tar rf \"$A/vm0\" second"), 2) << output_;
  EXPECT_NE(output_.find("Operation not permitted"), std::string::npos) << output_;
  EXPECT_TRUE(peer_view() == archive) << "the archive changed";
  ASSERT_EQ(sh("tar tf \"$B/vm0\""), 0) << output_;
  EXPECT_EQ(output_, "first\n");
}

TEST_F(Programs, RsyncInplaceRewritingFailsAndAppendWorks) {
  REQUIRE_PROGRAM("rsync", "rsync");
  const std::string v1 = pattern(100000, 1);
  write_file(scratch("src"), v1);
  // Onto the empty file: every write is at the end, so it works.
  ASSERT_EQ(sh("rsync --inplace \"$T/src\" \"$A/vm0\""), 0) << output_;
  EXPECT_TRUE(peer_view() == v1);
  // Again (-I: whatever the times say): rsync rewrites from offset 0.
  EXPECT_EQ(sh("rsync -I --inplace \"$T/src\" \"$A/vm0\""), 11) << output_;
  EXPECT_NE(output_.find("Operation not permitted"), std::string::npos) << output_;
  EXPECT_TRUE(peer_view() == v1) << "a refused rsync changed the file";
  // A changed source with the delta algorithm: refused the same way.
  write_file(scratch("src"), pattern(100000, 2));
  EXPECT_EQ(sh("rsync -I --inplace --no-whole-file \"$T/src\" \"$A/vm0\""), 11) << output_;
  EXPECT_TRUE(peer_view() == v1) << "a refused rsync changed the file";
  // --append sends only what is missing, then sets the size it wrote (a
  // truncate to the current length, a no-op).
  const std::string longer = v1 + pattern(50000, 3);
  write_file(scratch("src"), longer);
  EXPECT_EQ(sh("rsync --append \"$T/src\" \"$A/vm0\""), 0) << output_;
  EXPECT_TRUE(peer_view() == longer) << "rsync --append";
}

TEST_F(Programs, Sqlite3WritingInPlaceFailsAndLeavesTheDatabaseIntact) {
  REQUIRE_PROGRAM("sqlite3", "sqlite3");
  ASSERT_EQ(sh("sqlite3 \"$T/db\" 'create table t(x); insert into t values(1);'"), 0) << output_;
  const std::string db = read_text(scratch("db"));
  ASSERT_FALSE(db.empty());
  for (const std::string mode : {"memory", "off", "delete"}) {
    ASSERT_EQ(sh("cp \"$T/db\" \"$A/vm0\""), 0) << output_;
    ASSERT_TRUE(peer_view() == db) << "cp of the database";
    const int status = sh("sqlite3 \"$A/vm0\" 'PRAGMA journal_mode=" + mode + "; insert into t values(2);'");
    EXPECT_NE(status, 0) << "journal_mode=" << mode << ": " << output_;
    EXPECT_NE(output_.find("Error"), std::string::npos) << output_;
    EXPECT_TRUE(peer_view() == db) << "journal_mode=" << mode << ": the database changed";
    ASSERT_EQ(sh("sqlite3 \"$B/vm0\" 'select count(*) from t;'"), 0) << output_;
    EXPECT_EQ(output_, "1\n") << "journal_mode=" << mode;
  }
}

TEST_F(Programs, DdOverwritingFailsAndAppendingWorks) {
  ASSERT_EQ(sh("printf 'hello\\n' > \"$A/vm0\""), 0) << output_;
  EXPECT_EQ(sh("printf X | dd of=\"$A/vm0\" conv=notrunc seek=0 status=none"), 1) << output_;
  EXPECT_NE(output_.find("Operation not permitted"), std::string::npos) << output_;
  EXPECT_EQ(peer_view(), "hello\n");
  EXPECT_EQ(sh("printf 'more\\n' | dd of=\"$A/vm0\" conv=notrunc oflag=append status=none"), 0) << output_;
  EXPECT_EQ(peer_view(), "hello\nmore\n");
  EXPECT_EQ(sh("printf 'new\\n' | dd of=\"$A/vm0\" status=none"), 0) << output_;
  EXPECT_EQ(peer_view(), "new\n") << "dd without conv=notrunc truncates, then writes at the end";
  const std::string big = pattern(3 << 20, 4);
  write_file(scratch("big"), big);
  EXPECT_EQ(sh("dd if=\"$T/big\" of=\"$A/vm0\" bs=64k status=none"), 0) << output_;
  EXPECT_TRUE(peer_view() == big) << "dd bs=64k";
}

TEST_F(Programs, PythonOverwritingFailsAndItsAppendModesWork) {
  REQUIRE_PROGRAM("python3", "python3");
  ASSERT_EQ(sh("printf 'abc' > \"$A/vm0\""), 0);
  EXPECT_EQ(sh("python3 -c \"f = open('$A/vm0', 'r+b'); f.write(b'Z'); f.close()\""), 1) << output_;
  EXPECT_NE(output_.find("PermissionError: [Errno 1] Operation not permitted"), std::string::npos) << output_;
  EXPECT_EQ(peer_view(), "abc");
  EXPECT_EQ(sh("python3 -c \"f = open('$A/vm0', 'ab'); f.write(b'def'); f.close()\n"
               "f = open('$A/vm0', 'a'); f.write('ghi'); f.close()\n"
               "f = open('$A/vm0', 'r+b'); f.seek(0, 2); f.write(b'jkl'); f.close()\""),
            0)
      << output_;
  EXPECT_EQ(peer_view(), "abcdefghijkl");
  EXPECT_EQ(sh("python3 -c \"f = open('$A/vm0', 'w'); f.write('fresh'); f.close()\""), 0) << output_;
  EXPECT_EQ(peer_view(), "fresh");
}

// ---------------------------------------------------------------------------
// Programs that append or replace: they keep working.

TEST_F(Programs, ShellRedirectionsCatAndCp) {
  EXPECT_EQ(sh("echo one > \"$A/vm0\" && echo two >> \"$A/vm0\" && (echo three; echo four) >> \"$A/vm0\""), 0)
      << output_;
  EXPECT_EQ(peer_view(), "one\ntwo\nthree\nfour\n");
  const std::string data = pattern(2 << 20, 5);
  write_file(scratch("data"), data);
  EXPECT_EQ(sh("cat \"$T/data\" > \"$A/vm0\""), 0) << output_;
  EXPECT_TRUE(peer_view() == data) << "cat > vm0";
  EXPECT_EQ(sh("cp \"$T/data\" \"$A/vm0\""), 0) << output_;
  EXPECT_TRUE(peer_view() == data) << "cp";
  EXPECT_EQ(sh("cp \"$B/vm0\" \"$T/back\" && cmp \"$T/data\" \"$T/back\""), 0) << output_;
  EXPECT_EQ(sh("exec 3>\"$A/vm0\"; echo a >&3; echo b >&3; exec 3>&-"), 0) << output_;
  EXPECT_EQ(peer_view(), "a\nb\n") << "> then sequential writes";
}

TEST_F(Programs, ConcurrentAppendingShellsNeverLoseOrSplitALine) {
  ASSERT_EQ(::truncate(a_->file("vm0").c_str(), 0), 0);
  EXPECT_EQ(sh("for w in 1 2 3 4; do (i=0; while [ $i -lt 200 ]; do echo \"writer $w line $i\"; i=$((i+1)); "
               "done >> \"$A/vm0\") & done; wait"),
            0)
      << output_;
  const std::string all = peer_view();
  std::istringstream in(all);
  std::map<std::string, int> next;
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    ASSERT_EQ(line.rfind("writer ", 0), 0U) << "a split or mixed line: '" << line << "'";
    const auto space = line.find(' ', 7);
    const std::string writer = line.substr(7, space - 7);
    EXPECT_EQ(line, "writer " + writer + " line " + std::to_string(next[writer]++)) << "order within a writer";
  }
  EXPECT_EQ(lines, 800);
}

TEST_F(Programs, PerlNodeAndRustAppendModes) {
  ASSERT_EQ(sh("printf 'start\\n' > \"$A/vm0\""), 0);
  std::string expected = "start\n";
  if (have("perl")) {
    EXPECT_EQ(sh("perl -e 'open(my $f, \">>\", \"$ENV{A}/vm0\") or die $!; print $f \"perl\\n\"; close($f) or die $!'"),
              0)
        << output_;
    expected += "perl\n";
  }
  if (have("node")) {
    EXPECT_EQ(sh("node -e \"require('fs').appendFileSync(process.env.A + '/vm0', 'node\\n')\""), 0) << output_;
    expected += "node\n";
  }
  if (have("rustc")) {
    write_file(scratch("append.rs"),
               "use std::io::Write;\n"
               "fn main() {\n"
               "  let path = std::env::args().nth(1).unwrap();\n"
               "  let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();\n"
               "  f.write_all(b\"rust\\n\").unwrap();\n"
               "}\n");
    EXPECT_EQ(sh("rustc -O -o \"$T/append\" \"$T/append.rs\" && \"$T/append\" \"$A/vm0\""), 0) << output_;
    expected += "rust\n";
  }
  EXPECT_EQ(peer_view(), expected);
  if (!have("perl") || !have("node") || !have("rustc")) {
    GTEST_SKIP() << "skipped in part: perl, node (Debian package nodejs) or rustc (Debian package rustc) missing";
  }
}

TEST_F(Programs, GzipThroughThePartition) {
  REQUIRE_PROGRAM("gzip", "gzip");
  const std::string text = pattern(500000, 6);
  write_file(scratch("text"), text);
  EXPECT_EQ(sh("gzip -c \"$T/text\" > \"$A/vm0\""), 0) << output_;
  EXPECT_EQ(sh("gzip -dc \"$B/vm0\" > \"$T/back\" && cmp \"$T/text\" \"$T/back\""), 0) << output_;
  EXPECT_EQ(sh("gzip -c \"$T/text\" >> \"$A/vm0\""), 0) << output_;
  EXPECT_EQ(sh("gzip -dc \"$B/vm0\" | wc -c"), 0) << output_;
  EXPECT_EQ(output_, std::to_string(2 * text.size()) + "\n") << "two gzip members, appended";
}

// mmap goes through the page cache, the default.
TEST_F(Programs, PythonMapsAPeersFile) {
  REQUIRE_PROGRAM("python3", "python3");
  ASSERT_EQ(sh("printf 'mapped bytes' > \"$A/vm0\""), 0);
  EXPECT_EQ(sh("python3 -c \"import mmap\n"
               "f = open('$B/vm0', 'rb')\n"
               "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
               "print(m[:].decode())\n"
               "open('$A/vm0', 'ab').write(b' and more')\n"
               "m2 = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
               "print(m2[:].decode())\""),
            0)
      << output_;
  EXPECT_EQ(output_, "mapped bytes\nmapped bytes and more\n");
}

TEST_F(Programs, TailFollowsAPeersFileAndLessShowsIt) {
  REQUIRE_PROGRAM("tail", "coreutils");
  ASSERT_EQ(sh("printf 'one\\n' > \"$A/vm0\""), 0);
  // tail -f (sleep 0.1 s between looks) for a while in the background.
  EXPECT_EQ(sh("tail -s 0.1 -f \"$B/vm0\" > \"$T/tail\" 2>&1 & pid=$!; sleep 0.5; echo two >> \"$A/vm0\"; "
               "i=0; while [ $i -lt 100 ] && ! grep -q two \"$T/tail\"; do sleep 0.1; i=$((i+1)); done; "
               "kill $pid; cat \"$T/tail\""),
            0)
      << output_;
  EXPECT_EQ(output_, "one\ntwo\n");
  if (have("less")) {
    EXPECT_EQ(sh("less -E -X \"$B/vm0\" < /dev/null"), 0) << output_;
    EXPECT_EQ(output_, "one\ntwo\n");
  }
}

// The follow view streams into less +F, and Ctrl-C then q quits less as it
// does on a pipe (the interrupted wait ends in end of file, once). tmux
// drives less on a terminal of its own (a private tmux server).
TEST_F(Programs, LessFollowsTheFollowViewAndCtrlCThenQQuits) {
  REQUIRE_PROGRAM("less", "less");
  REQUIRE_PROGRAM("tmux", "tmux");
  ASSERT_EQ(sh("printf 'first line\\n' > \"$A/vm0\""), 0);
  const std::string socket = "ivshmfs-test-" + std::to_string(::getpid());
  const auto tmux = [&](const std::string& args) { return sh("tmux -L " + socket + " " + args); };
  const auto screen = [&] {
    tmux("capture-pane -p -t less");
    return output_;
  };
  ASSERT_EQ(tmux("new-session -d -s less -x 80 -y 12 \"less +F '$B/follow/vm0'\""), 0) << output_;
  EXPECT_TRUE(eventually([&] { return screen().find("first line") != std::string::npos; })) << screen();
  append(a_->file("vm0"), "second line\n");
  EXPECT_TRUE(eventually([&] { return screen().find("second line") != std::string::npos; })) << screen();
  tmux("send-keys -t less C-c");
  EXPECT_TRUE(eventually([&] { return screen().find("(END)") != std::string::npos; }))
      << "less did not stop following after Ctrl-C:\n"
      << screen();
  tmux("send-keys -t less q");
  EXPECT_TRUE(eventually([&] { return tmux("has-session -t less 2>/dev/null") != 0; })) << "less did not quit";
  tmux("kill-server 2>/dev/null");
}

TEST_F(Programs, DfReportsTheOwnPartitionAndNoInodeLimit) {
  EXPECT_EQ(sh("df -i \"$A\" | tail -n 1"), 0) << output_;
  std::istringstream fields(output_);
  std::string source, inodes, used, free, percent;
  fields >> source >> inodes >> used >> free >> percent;
  EXPECT_EQ(inodes, "0") << output_;
  EXPECT_EQ(percent, "-") << output_;
  EXPECT_EQ(sh("df --output=size,avail -B1 \"$A\" | tail -n 1"), 0) << output_;
  std::istringstream sizes(output_);
  uint64_t size = 0, avail = 0;
  sizes >> size >> avail;
  EXPECT_GT(size, 0U);
  EXPECT_EQ(avail, size) << "nothing written yet";
}

}  // namespace
}  // namespace ivshmfs::fstest
