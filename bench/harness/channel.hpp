// Channels and the generic benchmark built on them.
//
// A transport is written as two endpoint classes, Out (a sender) and In (a receiver), each with
//   std::string setup(int phase, const ChannelCtx&)   // the phases of harness.hpp; "" on success
//   void teardown(int phase, const ChannelCtx&)
// and
//   Out: void send(const std::byte* msg, std::size_t n)   // hand one message to every receiver
//   In:  template <class F> void recv(F&& f)             // wait for one message, call f(data, n)
// Every message of a channel has exactly ctx.payload bytes; its first 8 bytes carry a sequence number.
// In copy modes send() copies all n bytes in and recv() copies them out before calling f; in zero-copy
// modes send() writes the 8 sequence bytes into a loaned buffer and f reads them in place.
//
// ChannelBench<Out, In> wires endpoints to roles and runs the loops; the loops are templates, so a
// transport's send/recv are inlined into them (no virtual call per message).
#pragma once

#include <x86intrin.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/timing.hpp"
#include "harness/harness.hpp"

namespace shmbus::bench {

struct ChannelCtx {
  std::string name;  // unique for this channel, [A-Za-z0-9._-]
  std::string dir;   // run directory (FIFOs, sockets)
  std::size_t payload = 0;
  std::size_t depth = 0;
  int senders = 1;
  int receivers = 1;
  int index = 0;  // of this endpoint among the senders or the receivers
  Mode mode = Mode::busy;
  Pattern pattern = Pattern::roundtrip;
  u32 spin = 0;

  bool blocking() const { return mode == Mode::blocking || mode == Mode::spin_park; }
  bool zero_copy() const { return mode == Mode::zero_copy; }
  // Queue: one object that every sender and receiver shares (created by receiver 0).
  bool shared() const { return pattern == Pattern::queue; }
  // Name of receiver i's object when each receiver has its own.
  std::string per_receiver(int i) const { return name + "." + std::to_string(i); }
};

inline u64 seq_of(const std::byte* p) {
  u64 s;
  std::memcpy(&s, p, sizeof s);
  return s;
}
inline void put_seq(std::byte* p, u64 s) {
  std::memcpy(p, &s, sizeof s);
}

template <class Out, class In>
class ChannelBench final : public Bench {
 public:
  ChannelBench(const BenchDesc& d, Part part, const Control& ctl) : d_(d), part_(part) {
    msg_.assign(d.payload < 8 ? 8 : d.payload, std::byte{0x5a});
    ChannelCtx base;
    base.dir = ctl.rundir;
    base.payload = d.payload;
    base.depth = d.depth;
    base.mode = d.mode;
    base.pattern = d.pattern;
    base.spin = d.spin;
    const std::string n = d.name;
    // ping: leader -> follower (N receivers in fan-out); pong: follower -> leader; queue: producers ->
    // consumers.
    ChannelCtx ping = base, pong = base;
    ping.name = n + ".ping";
    pong.name = n + ".pong";
    ping.receivers = static_cast<int>(d.receivers);
    switch (part.role) {
      case Role::leader:
        out_ctx_ = ping;
        out_ = std::make_unique<Out>();
        in_ctx_.push_back(pong);
        in_.push_back(std::make_unique<In>());
        break;
      case Role::follower:
        out_ctx_ = pong;
        out_ = std::make_unique<Out>();
        for (u32 i = 0; i < d.receivers; ++i) {
          ChannelCtx c = ping;
          c.index = static_cast<int>(i);
          in_ctx_.push_back(c);
          in_.push_back(std::make_unique<In>());
        }
        break;
      case Role::producer: {
        ChannelCtx q = base;
        q.name = n + ".q";
        q.senders = static_cast<int>(d.senders);
        q.receivers = static_cast<int>(d.receivers);
        q.index = part.index;
        out_ctx_ = q;
        out_ = std::make_unique<Out>();
        break;
      }
      case Role::consumer: {
        ChannelCtx q = base;
        q.name = n + ".q";
        q.senders = static_cast<int>(d.senders);
        q.receivers = static_cast<int>(d.receivers);
        q.index = part.index;
        in_ctx_.push_back(q);
        in_.push_back(std::make_unique<In>());
        break;
      }
      case Role::victim:
        break;
    }
  }

  std::string setup(int phase) override {
    for (std::size_t i = 0; i < in_.size(); ++i)
      if (auto e = in_[i]->setup(phase, in_ctx_[i]); !e.empty()) return e;
    if (out_)
      if (auto e = out_->setup(phase, out_ctx_); !e.empty()) return e;
    return {};
  }

  void teardown(int phase) override {
    if (out_) out_->teardown(phase, out_ctx_);
    for (std::size_t i = 0; i < in_.size(); ++i) in_[i]->teardown(phase, in_ctx_[i]);
  }

  std::string run(u64 count, RunIo& io) override {
    io.slot->started_seq.store(io.slot->cmd_seq.load(std::memory_order_relaxed), std::memory_order_release);
    u64 errors = 0;
    switch (d_.pattern) {
      case Pattern::roundtrip:
      case Pattern::fanout:
        if (part_.role == Role::leader)
          errors = lead_roundtrip(count, io.samples, d_.pattern == Pattern::fanout ? io.samples2 : nullptr);
        else
          errors = follow_roundtrip(count);
        break;
      case Pattern::stream:
        if (part_.role == Role::leader)
          errors = lead_stream(count, io.samples);
        else
          errors = follow_stream(count);
        break;
      case Pattern::queue:
        if (part_.role == Role::producer)
          produce(count, io);
        else
          consume(io);
        break;
      case Pattern::reclaim:
        return "reclaim is not a channel benchmark";
    }
    io.slot->value[1] = errors;
    if (errors != 0) return std::to_string(errors) + " messages arrived out of order or with a wrong echo";
    return {};
  }

  std::string pill(u64 count) override {
    if (!out_) return "pill: not a producer";
    put_seq(msg_.data(), kPillSeq);
    for (u64 i = 0; i < count; ++i) out_->send(msg_.data(), d_.payload);
    return {};
  }

 private:
  u64 lead_roundtrip(u64 count, u64* samples, u64* send_cost) {
    Out& out = *out_;
    In& in = *in_[0];
    const std::size_t n = d_.payload;
    std::byte* msg = msg_.data();
    u64 errors = 0;
    u64 prev = now_ticks();
    for (u64 i = 0; i < count; ++i) {
      const u64 s = seq_++;
      put_seq(msg, s);
      out.send(msg, n);
      // Fan-out: the publisher's cost is the time from the previous stamp (taken right after the last
      // echo, so it is when this send began) to the end of send. The extra stamp is inside every fan-out
      // round trip, floors included, so fan-out rows stay comparable with each other.
      if (send_cost != nullptr) send_cost[i] = now_ticks() - prev;
      u64 echo = 0;
      in.recv([&](const std::byte* p, std::size_t) { echo = seq_of(p); });
      const u64 t = now_ticks();
      samples[i] = t - prev;
      prev = t;
      errors += echo != s;
    }
    return errors;
  }

  u64 follow_roundtrip(u64 count) {
    Out& out = *out_;
    const std::size_t n = d_.payload;
    std::byte* msg = msg_.data();
    u64 errors = 0;
    for (u64 i = 0; i < count; ++i) {
      const u64 want = seq_++;
      u64 got = 0;
      for (auto& in : in_) {
        in->recv([&](const std::byte* p, std::size_t) { got = seq_of(p); });
        errors += got != want;
      }
      put_seq(msg, got);
      out.send(msg, n);
    }
    return errors;
  }

  // One way: `count` messages, then the follower's acknowledgement (whose send also proves that every
  // message was taken: some transports lose the tail of a stream whose producer stops at once).
  u64 lead_stream(u64 count, u64* samples) {
    Out& out = *out_;
    In& in = *in_[0];
    const std::size_t n = d_.payload;
    std::byte* msg = msg_.data();
    const u64 t0 = now_ticks();
    for (u64 i = 0; i < count; ++i) {
      put_seq(msg, seq_++);
      out.send(msg, n);
    }
    u64 ack = 0;
    in.recv([&](const std::byte* p, std::size_t) { ack = seq_of(p); });
    samples[0] = now_ticks() - t0;
    return ack != seq_ - 1;
  }

  u64 follow_stream(u64 count) {
    In& in = *in_[0];
    u64 errors = 0;
    u64 last = 0;
    u64 got = 0;
    auto take = [&](const std::byte* p, std::size_t) {
      last = seq_of(p);
      errors += last != seq_;
      ++seq_;
      ++got;
    };
    if constexpr (requires(In & r) { r.recv_batch(take, std::size_t{1}); }) {
      while (got < count) in.recv_batch(take, static_cast<std::size_t>(count - got));
    } else {
      for (u64 i = 0; i < count; ++i) in.recv(take);
    }
    put_seq(msg_.data(), last);
    out_->send(msg_.data(), d_.payload);
    return errors;
  }

  void produce(u64 count, RunIo& io) {
    // Wait at the gate (futex): the orchestrator opens it for all producers at once and starts its clock.
    wait_gate(io.ctl->go);
    Out& out = *out_;
    std::byte* msg = msg_.data();
    const std::size_t n = d_.payload;
    for (u64 i = 0; i < count; ++i) {
      put_seq(msg, (static_cast<u64>(part_.index) << 40) | seq_++);
      out.send(msg, n);
    }
  }

  void consume(RunIo& io) {
    In& in = *in_[0];
    WorkerSlot& w = *io.slot;
    u64 taken = w.progress.load(std::memory_order_relaxed);
    for (;;) {
      u64 s = 0;
      in.recv([&](const std::byte* p, std::size_t) { s = seq_of(p); });
      if (s == kPillSeq) break;
      // Relaxed: polled by the orchestrator, which reads the final values after A-DONE.
      w.last_tick.store(now_ticks(), std::memory_order_relaxed);
      w.progress.store(++taken, std::memory_order_relaxed);
    }
  }

  static void wait_gate(std::atomic<u32>& go);

  BenchDesc d_;
  Part part_;
  std::vector<std::byte> msg_;
  u64 seq_ = 1;
  ChannelCtx out_ctx_;
  std::unique_ptr<Out> out_;
  std::vector<ChannelCtx> in_ctx_;
  std::vector<std::unique_ptr<In>> in_;
};

void wait_gate_impl(std::atomic<u32>& go);

template <class Out, class In>
void ChannelBench<Out, In>::wait_gate(std::atomic<u32>& go) {
  wait_gate_impl(go);
}

}  // namespace shmbus::bench
