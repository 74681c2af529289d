// The daemons a run needs: a private shmbus broker, iox-roudi for the iceoryx peer, and aeronmd for the
// Aeron peer. Each is started as a child of the orchestrator and stopped by PID.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace shmbus::bench {

// Run `argv` with stdout and stderr appended to `log`; returns the pid, or -1.
pid_t spawn_logged(const std::vector<std::string>& argv, const std::string& log);
// Wait up to `ms` for pid to exit; SIGKILL after that. Returns the wait status, or -1 if it was killed.
int reap(pid_t pid, int ms);
std::string tail_of(const std::string& path, std::size_t lines);

class Broker {
 public:
  // Start `shmbus broker --domain D` (runtime dir and domain from the environment) and wait until a
  // client can connect.
  bool start(const std::string& rundir, const std::string& domain, std::string* err);
  void stop();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

class Roudi {
 public:
  // Start iox-roudi on a private config sized for `max_payload`; wait for "RouDi is ready for clients".
  bool start(const std::string& rundir, std::size_t max_payload, std::string* err);
  // SIGTERM, wait; returns false (and says why) if RouDi did not stop cleanly.
  bool stop(std::string* err);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

// The Aeron C media driver (built with SHMBUS_AERON_ROOT), on a private directory in shared memory, shared
// threading mode; it deletes the directory when it starts and when it stops.
class Aeronmd {
 public:
  // Start aeronmd on `dir` and wait until its CnC file is there.
  bool start(const std::string& dir, const std::string& log, std::string* err);
  // SIGINT (its shutdown signal), wait; false (and why) if it did not stop cleanly.
  bool stop(std::string* err);
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

}  // namespace shmbus::bench
