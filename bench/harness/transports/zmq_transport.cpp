// Peer: ZeroMQ over ipc:// (libzmq 4.3). One context (one I/O thread) per worker process.
//
//   round trip, stream   ZMQ_PAIR per direction; the receiver binds, the sender connects
//   fan-out              the sender binds ZMQ_XPUB (verbose), the N receivers' ZMQ_SUB connect to it, and
//                        the sender waits in setup until it has read all N subscriptions (no "slow joiner"
//                        loss; a SUB that binds is never reported to a connecting XPUB in libzmq 4.3)
//   queue                every consumer binds ZMQ_PULL; every producer's ZMQ_PUSH connects to all of them
//                        and deals messages round-robin (ZeroMQ has no shared queue to compete on)
//
// Only blocking receives: the I/O thread runs on the worker's (pinned) CPU, so a receiver that spins on
// ZMQ_DONTWAIT starves the very thread that would deliver to it.
#include <zmq.h>

#include <cerrno>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"

namespace shmbus::bench {

namespace {

void* context() {
  static void* ctx = zmq_ctx_new();
  return ctx;
}

std::string zerr(const std::string& what) {
  return what + ": " + zmq_strerror(zmq_errno());
}

std::string endpoint(const ChannelCtx& c, int receiver) {
  return "ipc://" + c.dir + "/" + c.per_receiver(receiver) + ".zmq";
}
std::string pub_endpoint(const ChannelCtx& c) {
  return "ipc://" + c.dir + "/" + c.name + ".xpub.zmq";
}

void close_socket(void*& s) {
  if (s == nullptr) return;
  const int zero = 0;
  zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
  zmq_close(s);
  s = nullptr;
}

class ZmqOut {
 public:
  ~ZmqOut() { close_socket(s_); }
  std::string setup(int phase, const ChannelCtx& c) {
    const bool fanout = c.pattern == Pattern::fanout;
    if ((phase == 0 && fanout) || (phase == 2 && !fanout)) {
      const int type = c.shared() ? ZMQ_PUSH : fanout ? ZMQ_XPUB : ZMQ_PAIR;
      s_ = zmq_socket(context(), type);
      if (s_ == nullptr) return zerr("zmq_socket");
      const int hwm = 100000;
      zmq_setsockopt(s_, ZMQ_SNDHWM, &hwm, sizeof hwm);
      if (fanout) {
        const int one = 1;
        zmq_setsockopt(s_, ZMQ_XPUB_VERBOSE, &one, sizeof one);
        if (zmq_bind(s_, pub_endpoint(c).c_str()) != 0) return zerr("zmq_bind " + pub_endpoint(c));
        return {};
      }
      for (int i = 0; i < c.receivers; ++i)
        if (zmq_connect(s_, endpoint(c, i).c_str()) != 0) return zerr("zmq_connect " + endpoint(c, i));
    } else if (phase == 3 && fanout) {
      // XPUB (verbose) hands up one subscription message per subscriber.
      const int ms = 10000;
      zmq_setsockopt(s_, ZMQ_RCVTIMEO, &ms, sizeof ms);
      char b[64];
      for (int i = 0; i < c.receivers; ++i)
        if (zmq_recv(s_, b, sizeof b, 0) < 0) return zerr("waiting for subscriber " + std::to_string(i));
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close_socket(s_);
  }
  void send(const std::byte* msg, std::size_t n) {
    while (zmq_send(s_, msg, n, 0) != static_cast<int>(n))
      if (zmq_errno() != EINTR) fatal(zerr("zmq_send"));
  }

 private:
  void* s_ = nullptr;
};

class ZmqIn {
 public:
  ~ZmqIn() { close_socket(s_); }
  std::string setup(int phase, const ChannelCtx& c) {
    buf_.resize(c.payload);
    const bool fanout = c.pattern == Pattern::fanout;
    if (phase != (fanout ? 1 : 0)) return {};
    const int type = c.shared() ? ZMQ_PULL : fanout ? ZMQ_SUB : ZMQ_PAIR;
    s_ = zmq_socket(context(), type);
    if (s_ == nullptr) return zerr("zmq_socket");
    const int hwm = 100000;
    zmq_setsockopt(s_, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (fanout) {
      zmq_setsockopt(s_, ZMQ_SUBSCRIBE, "", 0);
      if (zmq_connect(s_, pub_endpoint(c).c_str()) != 0) return zerr("zmq_connect " + pub_endpoint(c));
      return {};
    }
    if (zmq_bind(s_, endpoint(c, c.index).c_str()) != 0) return zerr("zmq_bind " + endpoint(c, c.index));
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close_socket(s_);
  }
  template <class F>
  void recv(F&& f) {
    int r;
    while ((r = zmq_recv(s_, buf_.data(), buf_.size(), 0)) < 0)
      if (zmq_errno() != EINTR) fatal(zerr("zmq_recv"));
    f(buf_.data(), static_cast<std::size_t>(r));
  }

 private:
  void* s_ = nullptr;
  std::vector<std::byte> buf_;
};

}  // namespace

std::unique_ptr<Bench> make_zmq_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  if (d.mode != Mode::blocking) {
    *err = "only blocking receives: ZeroMQ's I/O thread shares the pinned CPU with a spinning receiver";
    return nullptr;
  }
  return std::make_unique<ChannelBench<ZmqOut, ZmqIn>>(d, p, ctl);
}

}  // namespace shmbus::bench
