// SPDX-License-Identifier: MIT
#include "ivshmfs/failpoint.hpp"

#include <signal.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

namespace ivshmfs {
namespace {

enum class Action { off, stop, sleep, abort, exit };

struct Point {
  const char* name;
  Action action = Action::off;
  unsigned argument = 0;   // sleep milliseconds or exit code
  unsigned remaining = 0;  // 0: every hit; else fires this many more times
  unsigned hits = 0;
};

constexpr std::array<const char*, 8> kNames{"writer.after-announce", "writer.after-copy", "writer.before-publish",
                                            "writer.reset-begin",    "writer.reset-odd",  "writer.mid-reset",
                                            "claim.after-token",     "claim.mid-fence"};

std::mutex g_mutex;
std::array<Point, kNames.size()> g_points = [] {
  std::array<Point, kNames.size()> points{};
  for (std::size_t i = 0; i < kNames.size(); ++i) points[i].name = kNames[i];
  return points;
}();

Point* find(std::string_view name) {
  for (auto& p : g_points)
    if (name == p.name) return &p;
  return nullptr;
}

void update_armed() {
  bool any = false;
  for (const auto& p : g_points) any = any || p.action != Action::off;
  detail::g_failpoints_armed.store(any, std::memory_order_relaxed);
}

bool parse_number(std::string_view text, unsigned* out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc{} && end == text.data() + text.size();
}

// "name(N)" -> N
bool parse_call(std::string_view text, std::string_view name, unsigned* out) {
  if (text.size() < name.size() + 2 || text.substr(0, name.size()) != name || text[name.size()] != '(' ||
      text.back() != ')')
    return false;
  return parse_number(text.substr(name.size() + 1, text.size() - name.size() - 2), out);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Arms the points named in IVSHMFS_FAILPOINTS when the library is loaded.
[[maybe_unused]] const bool g_from_environment = [] {
  const char* spec = std::getenv("IVSHMFS_FAILPOINTS");
  if (spec != nullptr && *spec != '\0') {
    if (auto r = failpoint_set_all(spec); !r) spdlog::error("IVSHMFS_FAILPOINTS: {}", r.error().message);
  }
  return true;
}();

}  // namespace

namespace detail {
std::atomic<bool> g_failpoints_armed{false};

void failpoint_hit(const char* name) noexcept {
  Action action = Action::off;
  unsigned argument = 0;
  {
    std::lock_guard lock(g_mutex);
    Point* p = find(name);
    if (p == nullptr || p->action == Action::off) return;
    action = p->action;
    argument = p->argument;
    ++p->hits;
    if (p->remaining > 0 && --p->remaining == 0) {
      p->action = Action::off;
      update_armed();
    }
  }
  switch (action) {
    case Action::off: break;
    case Action::stop: ::raise(SIGSTOP); break;
    case Action::sleep: std::this_thread::sleep_for(std::chrono::milliseconds(argument)); break;
    case Action::abort: ::raise(SIGABRT); break;
    case Action::exit: ::_exit(static_cast<int>(argument)); break;
  }
}
}  // namespace detail

Result<void> failpoint_set(std::string_view name, std::string_view action) {
  action = trim(action);
  Point parsed{};
  if (auto star = action.find('*'); star != std::string_view::npos) {
    if (!parse_number(action.substr(0, star), &parsed.remaining) || parsed.remaining == 0) {
      return make_error(Errc::invalid_argument, "fail point " + std::string(name) + ": bad count in '" +
                                                    std::string(action) + "' (expected N*ACTION, N > 0)");
    }
    action = action.substr(star + 1);
  }
  if (action == "off") {
    parsed.action = Action::off;
  } else if (action == "stop") {
    parsed.action = Action::stop;
  } else if (action == "abort") {
    parsed.action = Action::abort;
  } else if (parse_call(action, "sleep", &parsed.argument)) {
    parsed.action = Action::sleep;
  } else if (parse_call(action, "exit", &parsed.argument)) {
    parsed.action = Action::exit;
  } else {
    return make_error(Errc::invalid_argument, "fail point " + std::string(name) + ": unknown action '" +
                                                  std::string(action) +
                                                  "' (expected off, stop, sleep(MS), abort or exit(CODE))");
  }
  std::lock_guard lock(g_mutex);
  Point* p = find(name);
  if (p == nullptr) {
    std::string known;
    for (const char* n : kNames) known += std::string(known.empty() ? "" : ", ") + n;
    return make_error(Errc::invalid_argument, "unknown fail point '" + std::string(name) + "' (known: " + known + ")");
  }
  p->action = parsed.action;
  p->argument = parsed.argument;
  p->remaining = parsed.remaining;
  p->hits = 0;
  update_armed();
  return {};
}

Result<void> failpoint_set_all(std::string_view spec) {
  while (!spec.empty()) {
    const auto end = spec.find_first_of(";,");
    std::string_view item = trim(spec.substr(0, end));
    spec = end == std::string_view::npos ? std::string_view{} : spec.substr(end + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) {
      return make_error(Errc::invalid_argument,
                        "fail point spec '" + std::string(item) + "' is not of the form name=action");
    }
    if (auto r = failpoint_set(trim(item.substr(0, eq)), item.substr(eq + 1)); !r) return r;
  }
  return {};
}

void failpoint_clear() noexcept {
  std::lock_guard lock(g_mutex);
  for (auto& p : g_points) p.action = Action::off;
  update_armed();
}

unsigned failpoint_hits(std::string_view name) noexcept {
  std::lock_guard lock(g_mutex);
  const Point* p = find(name);
  return p == nullptr ? 0 : p->hits;
}

}  // namespace ivshmfs
