// SPDX-License-Identifier: MIT
// "A partition changed": how the filesystem learns of peers' commits. Peers
// in other systems write behind our back; a change source decides when to
// look at the control blocks. Three implementations: PollingSource (an
// adaptive timer, polling_source.hpp), DoorbellSource (ivshmem-doorbell
// interrupts in a guest, or ivshm-server's eventfds on the host;
// doorbell_source.hpp) and FutexSource (peers on this host,
// futex_source.hpp). The filesystem sees only this interface;
// make_change_source() picks one and logs which.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "ivshmfs/region.hpp"
#include "options.hpp"
#include "server_client.hpp"

namespace ivshmfs::fs {

// What the filesystem gives a source when it starts.
struct ChangeListener {
  // Look at every control block and wake the waiters of what changed.
  // Returns true while looking again soon is worth it (data flowing to
  // waiters, work left such as pending invalidations). Never throws.
  std::function<bool()> look;
  // The partition ids (bit i: id i) some reader waits for now.
  std::function<uint64_t()> waited_for;
};

class ChangeSource {
 public:
  ChangeSource() = default;
  ChangeSource(const ChangeSource&) = delete;
  ChangeSource& operator=(const ChangeSource&) = delete;
  virtual ~ChangeSource() = default;

  // Starts calling listener.look from a thread of its own.
  virtual void start(ChangeListener listener) = 0;
  virtual void stop() noexcept = 0;
  // A reader started waiting, or a local reset: look as soon as possible.
  virtual void kick() noexcept = 0;
  // This peer committed to its own partition (its own waiters were woken
  // already): tell the peers that wait for it. Any thread.
  virtual void committed() noexcept = 0;
  // The .status line "wakeups source=NAME ...": which source runs and why
  // its waits ended (counters since the mount), newline-terminated.
  [[nodiscard]] virtual std::string status() const = 0;
};

// A DoorbellSource on the eventfds of ivshm-server when `server` is given
// (-o server=; the caller checked that its id is `own_id`); else a
// DoorbellSource when the backend is a device with doorbell interrupts,
// `own_id` (the partition this peer writes) is its IVPosition and doorbells
// are not turned off; a FutexSource when the backend is a host file, this
// peer owns a partition (to announce what it waits for) and futexes are not
// turned off; otherwise a PollingSource. Logs its choice and why.
std::unique_ptr<ChangeSource> make_change_source(const std::shared_ptr<Region>& region, std::optional<uint32_t> own_id,
                                                 const Options& options,
                                                 std::unique_ptr<ServerClient> server = nullptr);

}  // namespace ivshmfs::fs
