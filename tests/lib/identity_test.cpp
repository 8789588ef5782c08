// SPDX-License-Identifier: MIT
// Peer ids from hostnames, size parsing and formatting, error names.
#include "ivshmfs/identity.hpp"

#include "test_support.hpp"

namespace ivshmfs::test {
namespace {

TEST(Identity, PeerIdFromHostname) {
  const std::pair<const char*, uint32_t> good[] = {
      {"vm1", 1},   {"vm0", 0},     {"vm12-web", 12}, {"vm1-web", 1}, {"vm7.example.org", 7}, {"VM3", 3},
      {"vm2_x", 2}, {"1_alpha", 1}, {"12_beta", 12},  {"0_", 0},      {"vm63", 63},           {"vm007", 7},
  };
  for (const auto& [name, id] : good) {
    auto got = peer_id_from_hostname(name);
    ASSERT_TRUE(got.has_value()) << "'" << name << "' rejected";
    EXPECT_EQ(*got, id) << "'" << name << "'";
  }
  for (const char* name : {"", "web", "vm", "vmx1", "vm1x", "vm-1", "1", "12", "1-alpha", "_1", "x1_a", "vm 1",
                           "vm1234567890", "99999999999_a", "v1", "m1"}) {
    EXPECT_FALSE(peer_id_from_hostname(name).has_value())
        << "'" << name << "' accepted as " << peer_id_from_hostname(name).value_or(0);
  }
}

TEST(Identity, ExplicitIdWins) {
  auto who = resolve_peer_id(5, nullptr);
  ASSERT_TRUE(who.ok()) << who.error().message;
  EXPECT_EQ(who->id, 5u);
  EXPECT_EQ(who->source, "option");
}

TEST(Identity, ParseSize) {
  const std::pair<const char*, uint64_t> good[] = {
      {"12", 12},
      {"0", 0},
      {"4k", 4096},
      {"4K", 4096},
      {"4KB", 4096},
      {"4KiB", 4096},
      {"64M", 64ULL << 20},
      {"64MiB", 64ULL << 20},
      {"1G", 1ULL << 30},
      {"2T", 2ULL << 40},
      {"100B", 100},
      {"18446744073709551615", UINT64_MAX},
      {"16777215T", 16777215ULL << 40},
  };
  for (const auto& [text, value] : good) {
    auto got = parse_size(text);
    ASSERT_TRUE(got.ok()) << "'" << text << "' rejected: " << got.error().message;
    EXPECT_EQ(*got, value) << "'" << text << "'";
  }
  for (const char* text : {"", "M", "abc", "-1", "1.5G", "12X", "4KK", "4 K", " 4", "4K ", "64MB5", "0x10", "1e3",
                           "18446744073709551616", "99999999999999999999999", "16777216T", "17179869184G"}) {
    auto got = parse_size(text);
    ASSERT_FALSE(got.ok()) << "'" << text << "' accepted as " << *got;
    EXPECT_EQ(got.error().code, Errc::invalid_argument);
    EXPECT_NE(got.error().message.find(std::string("'") + text + "'"), std::string::npos)
        << "message does not quote the input: " << got.error().message;
  }
}

TEST(Identity, FormatSize) {
  EXPECT_EQ(format_size(0), "0 B");
  EXPECT_EQ(format_size(100), "100 B");
  EXPECT_EQ(format_size(4096), "4 KiB");
  EXPECT_EQ(format_size(64ULL << 20), "64 MiB");
  EXPECT_EQ(format_size(1ULL << 30), "1 GiB");
  EXPECT_EQ(format_size((1ULL << 30) + 1), "1073741825 B");
}

TEST(Errors, EveryCodeHasANameAndAnErrno) {
  for (int code = static_cast<int>(Errc::io_error); code <= static_cast<int>(Errc::too_big); ++code) {
    const auto errc = static_cast<Errc>(code);
    EXPECT_STRNE(to_string(errc), "unknown") << code;
    EXPECT_GT(to_errno(errc), 0) << to_string(errc);
  }
  EXPECT_EQ(make_error(Errc::no_space, "x").negative_errno(), -ENOSPC);
  EXPECT_EQ(make_error(Errc::claimed, "x").negative_errno(), -EBUSY);
  errno = EACCES;
  auto sys = make_sys_error("/some/file");
  EXPECT_EQ(sys.code, Errc::io_error);
  EXPECT_EQ(sys.negative_errno(), -EACCES);
  EXPECT_NE(sys.message.find("/some/file"), std::string::npos);
}

}  // namespace
}  // namespace ivshmfs::test
