// Names, roles, and the table from transport name to factory.
#include <cerrno>
#include <cstring>

#include "harness/channel.hpp"
#include "harness/harness.hpp"
#include "harness/transports/transports.hpp"
#include "shmbus/eventcount.hpp"

namespace shmbus::bench {

const char* to_string(Scenario s) {
  switch (s) {
    case Scenario::pingpong:
      return "pingpong";
    case Scenario::throughput:
      return "throughput";
    case Scenario::fanout:
      return "fanout";
    case Scenario::queue:
      return "queue";
    case Scenario::wakeup:
      return "wakeup";
    case Scenario::reclaim:
      return "reclaim";
  }
  return "?";
}

bool parse_scenario(const std::string& s, Scenario* out) {
  for (Scenario x : {Scenario::pingpong, Scenario::throughput, Scenario::fanout, Scenario::queue,
                     Scenario::wakeup, Scenario::reclaim})
    if (s == to_string(x)) {
      *out = x;
      return true;
    }
  return false;
}

const char* to_string(Mode m) {
  switch (m) {
    case Mode::busy:
      return "busy";
    case Mode::spin_park:
      return "spin-park";
    case Mode::blocking:
      return "blocking";
    case Mode::copy:
      return "copy";
    case Mode::zero_copy:
      return "zero-copy";
    case Mode::loans:
      return "loans";
    case Mode::samples:
      return "samples";
  }
  return "?";
}

Part part_of(const BenchDesc& d, int worker) {
  switch (d.pattern) {
    case Pattern::roundtrip:
    case Pattern::stream:
    case Pattern::fanout:
      if (worker == 0) return {Role::leader, 0, true};
      if (worker == 1) return {Role::follower, 0, true};
      return {Role::leader, 0, false};
    case Pattern::queue:
      if (worker < static_cast<int>(d.senders)) return {Role::producer, worker, true};
      if (worker < static_cast<int>(d.senders + d.receivers))
        return {Role::consumer, worker - static_cast<int>(d.senders), true};
      return {Role::producer, 0, false};
    case Pattern::reclaim:
      return {Role::victim, 0, worker == 0};
  }
  return {Role::leader, 0, false};
}

int workers_for(const BenchDesc& d) {
  switch (d.pattern) {
    case Pattern::queue:
      return static_cast<int>(d.senders + d.receivers);
    case Pattern::reclaim:
      return 1;
    default:
      return 2;
  }
}

bool transport_compiled(const std::string& name, std::string* why_not) {
#ifndef SHMBUS_BENCH_HAVE_ZMQ
  if (name == "zmq-ipc") {
    *why_not = "built without ZeroMQ (install libzmq3-dev and reconfigure)";
    return false;
  }
#endif
#ifndef SHMBUS_BENCH_HAVE_ICEORYX
  if (name == "iceoryx") {
    *why_not =
        "built without iceoryx (install iceoryx libiceoryx-posh-dev libiceoryx-hoofs-dev and reconfigure)";
    return false;
  }
#endif
#ifndef SHMBUS_BENCH_HAVE_AERON
  if (name.rfind("aeron-ipc", 0) == 0) {
    *why_not =
        "built without Aeron (not in Debian: build it from source and configure with "
        "-DSHMBUS_AERON_ROOT=<its tree>)";
    return false;
  }
#endif
  (void)name;
  (void)why_not;
  return true;
}

std::unique_ptr<Bench> make_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  const std::string t = d.transport;
  if (t.rfind("floor-", 0) == 0) return make_floor_bench(d, p, ctl, err);
  if (t.rfind("layer-", 0) == 0) return make_layer_bench(d, p, ctl, err);
  if (t == "pipe" || t == "uds-stream" || t == "uds-seqpacket" || t == "posix-mq")
    return make_kernel_bench(d, p, ctl, err);
  if (t == "boost-mq") return make_boost_bench(d, p, ctl, err);
  if (t == "shmbus") return make_shmbus_bench(d, p, ctl, err);
#ifdef SHMBUS_BENCH_HAVE_ZMQ
  if (t == "zmq-ipc") return make_zmq_bench(d, p, ctl, err);
#endif
#ifdef SHMBUS_BENCH_HAVE_ICEORYX
  if (t == "iceoryx") return make_iceoryx_bench(d, p, ctl, err);
#endif
#ifdef SHMBUS_BENCH_HAVE_AERON
  if (t == "aeron-ipc" || t == "aeron-ipc-exclusive") return make_aeron_bench(d, p, ctl, err);
#endif
  if (!transport_compiled(t, err)) return nullptr;
  *err = "unknown transport \"" + t + "\"";
  return nullptr;
}

std::string errno_text(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

void wait_gate_impl(std::atomic<u32>& go) {
  for (;;) {
    // Acquire: pairs with the orchestrator's release store that opens the gate.
    if (go.load(std::memory_order_acquire) != 0) return;
    (void)futex_wait(&go, 0, std::chrono::milliseconds(100));
  }
}

}  // namespace shmbus::bench
