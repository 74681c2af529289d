// shmbus through its public API (shmbus.hpp), against the broker the orchestrator started for the run.
//
// One topic per channel, created by receiver 0 with Client::create_topic: a stream (one ring per
// subscriber; the fan-out follower holds N subscribers of one topic) or, in the queue pattern, a queue
// with competing consumers. Streams use overflow drop-oldest (the default) for latency and block for the
// one-way stream, so that no message is lost there.
//
// Modes: busy and copy spin on try_receive() (the one-way stream: Subscriber::try_receive_batch(); the queue:
// Consumer::try_receive_batch(), up to 32 at a time) and use the copy
// API (publish(bytes), copy out of the sample); zero-copy spins on try_receive(), loans a chunk, writes 8
// bytes in place and reads them in place; spin-park and blocking call receive() (SubscriberOptions.spin
// iterations, then the futex).
#include <sched.h>

#include <optional>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus::bench {

namespace {

constexpr auto kTimeout = std::chrono::seconds(10);

std::optional<Client>& client_slot() {
  static std::optional<Client> c;
  return c;
}

Result<Client*> client() {
  auto& c = client_slot();
  if (!c) {
    auto r = Client::connect({.name = "shmbus-bench", .autostart = false});
    if (!r) return r.error();
    c.emplace(std::move(*r));
  }
  return &*c;
}

class ShmbusOut {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    zero_copy_ = c.zero_copy();
    auto cl = client();
    if (!cl) return cl.error().message();
    if (c.shared()) {
      auto p = (*cl)->producer(c.name);
      if (!p) return p.error().message();
      prod_.emplace(std::move(*p));
    } else {
      auto p = (*cl)->publisher(c.name);
      if (!p) return p.error().message();
      pub_.emplace(std::move(*p));
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) {
      pub_.reset();
      prod_.reset();
    }
  }
  void send(const std::byte* msg, std::size_t n) {
    if (pub_) {
      send_on(*pub_, msg, n);
    } else {
      send_on(*prod_, msg, n);
    }
  }

 private:
  template <class Port>
  void send_on(Port& port, const std::byte* msg, std::size_t n) {
    Status st;
    if (zero_copy_) {
      auto loan = port.loan(n, kTimeout);
      if (!loan) fatal("loan: " + loan.error().message());
      std::memcpy(loan->data(), msg, 8);
      st = port.publish(std::move(*loan), {}, kTimeout);
    } else {
      st = port.publish(std::span<const std::byte>(msg, n), {}, kTimeout);
    }
    if (!st) fatal("publish: " + st.error().message());
  }
  bool zero_copy_ = false;
  std::optional<Publisher> pub_;
  std::optional<Producer> prod_;
};

class ShmbusIn {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    zero_copy_ = c.zero_copy();
    blocking_ = c.blocking();
    buf_.resize(c.payload);
    auto cl = client();
    if (!cl) return cl.error().message();
    if (phase == 0 && c.index == 0) {
      TopicOptions o;
      o.kind = c.shared() ? TopicKind::queue : TopicKind::stream;
      o.depth = c.depth;
      o.max_size = c.payload;
      o.overflow = c.pattern == Pattern::stream ? Overflow::block : Overflow::drop_oldest;
      o.max_subscribers = static_cast<u32>(c.shared() ? 1 : c.receivers);
      if (auto st = (*cl)->create_topic(c.name, o); !st) return st.error().message();
      owner_ = true;
    } else if (phase == 1) {
      if (c.shared()) {
        auto r = (*cl)->consumer(c.name);
        if (!r) return r.error().message();
        cons_.emplace(std::move(*r));
        pre_.reserve(kPrefetch);
      } else {
        auto r = (*cl)->subscriber(c.name, {.spin = c.mode == Mode::spin_park ? c.spin : 0});
        if (!r) return r.error().message();
        sub_.emplace(std::move(*r));
      }
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0) {
      sub_.reset();
      pre_.clear();  // nacked back, before the consumer goes
      pre_i_ = 0;
      cons_.reset();
    }
    if (phase == 1 && owner_)
      if (auto cl = client()) (void)(*cl)->delete_topic(c.name);
  }
  // Stream pattern, busy modes: take what is there as one batch (Subscriber::try_receive_batch: one tail
  // store per batch), as floor-ring pops in batches. Otherwise one message.
  template <class F>
  void recv_batch(F&& f, std::size_t max) {
    if (!sub_ || blocking_) return recv(f);
    while (sub_->try_receive_batch([&](Sample& s) { deliver(s.bytes(), f); }, max) == 0) {
    }
  }
  template <class F>
  void recv(F&& f) {
    if (sub_) {
      if (!blocking_) {
        for (;;)
          if (auto s = sub_->try_receive()) return deliver(s->bytes(), f);
      }
      for (;;) {
        auto r = sub_->receive(kTimeout);
        if (r) return deliver(r->bytes(), f);
        if (r.error().code() != Errc::timed_out) fatal("receive: " + r.error().message());
      }
    }
    if (!blocking_) {
      // Queue pattern, busy: take what is ready in batches of up to kPrefetch (Consumer::try_receive_batch,
      // one wake-up of waiting producers per batch) and hand them out one by one; more processes than
      // CPUs, so a consumer yields when the queue is empty (as the floor-ring queue does). Deliveries still
      // held at teardown (after the last pill) are nacked back.
      while (pre_i_ == pre_.size()) {
        pre_.clear();
        pre_i_ = 0;
        if (cons_->try_receive_batch([&](Delivery& d) { pre_.push_back(std::move(d)); }, kPrefetch) == 0)
          sched_yield();
      }
      Delivery& d = pre_[pre_i_++];
      const bool pill = d.bytes().size() >= 8 && seq_of(d.bytes().data()) == kPillSeq;
      deliver(d.bytes(), f);
      d.ack();
      if (pill) {  // this consumer stops: what else it took goes back for the others (nacked)
        pre_.clear();
        pre_i_ = 0;
      }
      return;
    }
    for (;;) {
      auto r = cons_->receive(kTimeout);
      if (r) {
        deliver(r->bytes(), f);
        r->ack();
        return;
      }
      if (r.error().code() != Errc::timed_out) fatal("receive: " + r.error().message());
    }
  }

 private:
  template <class F>
  void deliver(std::span<const std::byte> b, F& f) {
    if (zero_copy_) {
      f(b.data(), b.size());
    } else {
      std::memcpy(buf_.data(), b.data(), b.size());
      f(buf_.data(), b.size());
    }
  }
  static constexpr std::size_t kPrefetch = 32;
  bool zero_copy_ = false, blocking_ = false, owner_ = false;
  std::optional<Subscriber> sub_;
  std::optional<Consumer> cons_;
  std::vector<Delivery> pre_;  // queue, busy: taken in the last batch, handed out from pre_i_
  std::size_t pre_i_ = 0;
  std::vector<std::byte> buf_;
};

// Reclaim: a client that holds chunks and waits to be killed. Setup connects and (loans) takes K loans, or
// (samples) subscribes; run(K) in samples mode receives K messages and keeps them.
class VictimBench final : public Bench {
 public:
  explicit VictimBench(const BenchDesc& d) : d_(d) {}
  std::string setup(int phase) override {
    if (phase != 0) return {};
    auto cl = client();
    if (!cl) return cl.error().message();
    if (d_.mode == Mode::loans) {
      auto p = (*cl)->publisher(d_.name);
      if (!p) return p.error().message();
      pub_.emplace(std::move(*p));
    } else {
      auto s = (*cl)->subscriber(d_.name);
      if (!s) return s.error().message();
      sub_.emplace(std::move(*s));
    }
    return {};
  }
  std::string run(u64 count, RunIo& io) override {
    io.slot->value[0] = OwnerId::self().value;
    for (u64 i = 0; i < count; ++i) {
      if (pub_) {
        auto l = pub_->loan(d_.payload, kTimeout);
        if (!l) return "loan: " + l.error().message();
        loans_.push_back(std::move(*l));
      } else {
        auto s = sub_->receive(kTimeout);
        if (!s) return "receive: " + s.error().message();
        samples_.push_back(std::move(*s));
      }
    }
    return {};
  }
  void teardown(int phase) override {
    if (phase != 0) return;
    loans_.clear();
    samples_.clear();
    pub_.reset();
    sub_.reset();
  }

 private:
  BenchDesc d_;
  std::optional<Publisher> pub_;
  std::optional<Subscriber> sub_;
  std::vector<Loan> loans_;
  std::vector<Sample> samples_;
};

}  // namespace

std::unique_ptr<Bench> make_shmbus_bench(const BenchDesc& d, Part p, const Control& ctl, std::string*) {
  if (d.pattern == Pattern::reclaim) return std::make_unique<VictimBench>(d);
  return std::make_unique<ChannelBench<ShmbusOut, ShmbusIn>>(d, p, ctl);
}

void shmbus_client_shutdown() {
  client_slot().reset();
}

}  // namespace shmbus::bench
