// Broker: the supervisor of one bus domain (`shmbus broker`).
//
// What it owns: the domain's lock (/dev/shm/shmbus.<domain>.lock, an exclusive flock beside the segments
// it guards, so that one broker runs per domain whatever runtime directory each was started with), its pid
// file (<domain dir>/broker.pid), its control socket (broker.sock), the topic directory segment (the
// broker is its only writer) and every topic segment. What it does: answers the control protocol of
// shmbus/detail/control.hpp, activates and frees subscriber slots, and reclaims what a dead client held.
// The data path never passes through it: if the broker dies, clients keep exchanging messages, and a new
// broker adopts the segments it finds (after validating them) or removes them.
//
// What survives a broker: topics and their queued messages outlive every broker exit (stop, SIGTERM,
// idle exit of an autostarted broker, SIGKILL) and are adopted by the next broker. Only `topic delete`,
// `shmbus stop --purge`, `shmbus broker --purge-on-exit` or purge_domain() remove them. The bus lives in
// RAM (/dev/shm): a reboot empties it.
//
// Threads: a Broker is driven by one thread, the one that calls run(); it is a single epoll loop over the
// listening socket, one socket and one pidfd per client, a signalfd (SIGTERM, SIGINT) and a timerfd that
// ticks every 200 ms. start() blocks SIGTERM and SIGINT in the calling thread so that the signalfd sees
// them; call it before starting other threads.
//
// Clients and death: the broker learns a client's pid/uid/gid from SO_PEERCRED and opens a pidfd for it.
// When the pidfd becomes readable the process is gone, and the broker calls TopicHandle::reclaim() on
// every topic: its loans and chunks return to their pools, its subscriber slots are freed, its unacked
// queue messages are redelivered. A client that only closes its socket (the process lives on) gets its
// slots freed. Because a process's exit closes its sockets before its pidfd fires, a closed session
// keeps its pidfd watched for a short grace period. Every tick the broker drains the rings of free slots
// (stragglers pushed after a slot was freed) and every second it reclaims any owner named in a segment
// that no longer runs (clients that died while no broker ran).
//
// Memory ordering: the broker writes shared memory only through DirectoryWriter and TopicHandle, whose
// headers say how each write is published (R7, R8); it adds no ordering of its own.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config.hpp"
#include "shmbus/result.hpp"

namespace shmbus::broker {

struct BrokerOptions {
  std::string domain;  // empty: $SHMBUS_DOMAIN or "default"
  BrokerConfig config;
  bool autostart = false;                    // started by a client: exit when idle
  std::optional<std::uint32_t> idle_exit_s;  // overrides config.idle_exit_s; default 10
  bool purge_on_exit = false;                // remove the directory and every topic segment at shutdown
  std::chrono::milliseconds tick{200};       // sweep period
};

inline constexpr std::uint32_t kDefaultIdleExitS = 10;

// The one-broker-per-domain lock: an exclusive flock on /dev/shm/shmbus.<domain>.lock, created
// O_NOFOLLOW, refused when another uid owns it. The holder writes `holder` into it (the message a second
// taker gets: who holds the domain, with its pid) so that a refusal names the holder. Released when
// destroyed.
class DomainLock {
 public:
  static Result<DomainLock> take(std::string_view domain, const std::string& holder);
  DomainLock(DomainLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)), path_(std::move(o.path_)) {}
  DomainLock& operator=(DomainLock&&) = delete;
  ~DomainLock();
  // Remove the lock file while holding it (a purged domain leaves nothing behind). take() re-checks the
  // path after its flock, so a process that opened the old file retries on the new one.
  void unlink() noexcept;

 private:
  DomainLock() = default;
  int fd_ = -1;
  std::string path_;
};

std::string domain_lock_path(std::string_view domain);
// The names (for Segment::remove) of every segment of `domain` in /dev/shm: the directory and the topics.
std::vector<std::string> domain_segments(std::string_view domain);
// Mark every topic of a domain deleted (for the clients that still map it) and remove every segment.
std::size_t remove_domain_segments(std::string_view domain);
// Remove every segment of a domain while no broker runs (takes the lock; Errc::already_exists when a
// broker holds it), then the lock file. Returns how many segments it removed.
Result<std::size_t> purge_domain(std::string_view domain);

class Broker {
 public:
  // Take the domain's lock, write the pid file, adopt or create the directory and the topics (those of
  // the config included) and listen on the control socket. Errc::already_exists when another broker
  // holds the domain; its message names that broker's pid.
  static Result<std::unique_ptr<Broker>> start(BrokerOptions options);

  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;
  ~Broker();  // shuts down if run() has not

  // Serve until SIGTERM/SIGINT, a "stop" request, or (autostart) idle_exit_s seconds without clients; then
  // shut down: close every connection and unlink the socket and pid file. The segments stay for the
  // next broker unless purge_on_exit or a stop request with "purge". Returns the process exit status (0,
  // or 1 after a fatal loop error).
  int run();

  const std::string& domain() const;

 private:
  struct Impl;
  explicit Broker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus::broker
