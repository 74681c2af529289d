// Peer: Eclipse iceoryx 2.0 (Debian), zero copy through RouDi-managed shared memory. The orchestrator
// starts iox-roudi for the run (private config, monitoring off) and stops it after every worker has left.
//
// One service per channel; the fan-out follower holds N subscribers of one service. Lossless:
// WAIT_FOR_CONSUMER on the publisher, BLOCK_PRODUCER on the subscriber. The sender loans a chunk of the
// message's size, writes the 8-byte sequence number in place and publishes; the receiver reads in place and
// releases. busy/zero-copy: spin on take(); blocking: a WaitSet on HAS_DATA. iceoryx 2.0 has no competing
// consumers (every subscriber gets every message), so the queue pattern is skipped.
#include <unistd.h>

#include <chrono>
#include <iceoryx_posh/mepoo/chunk_header.hpp>
#include <iceoryx_posh/popo/untyped_publisher.hpp>
#include <iceoryx_posh/popo/untyped_subscriber.hpp>
#include <iceoryx_posh/popo/wait_set.hpp>
#include <iceoryx_posh/runtime/posh_runtime.hpp>
#include <optional>
#include <thread>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"

namespace shmbus::bench {

namespace {

bool g_runtime = false;

void ensure_runtime() {
  if (g_runtime) return;
  // "sbw<orchestrator pid>-<pid>": iceoryx leaves a socket of this name in /tmp when the worker is killed,
  // and the orchestrator removes those by prefix.
  const std::string name = "sbw" + std::to_string(::getppid()) + "-" + std::to_string(::getpid());
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
  g_runtime = true;
}

iox::capro::ServiceDescription service(const ChannelCtx& c) {
  return {"shmbus-bench", iox::capro::IdString_t(iox::cxx::TruncateToCapacity, c.name.c_str()), "msg"};
}

class IoxOut {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    ensure_runtime();
    iox::popo::PublisherOptions o;
    o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    pub_.emplace(service(c), o);
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) pub_.reset();
  }
  void send(const std::byte* msg, std::size_t n) {
    for (;;) {
      auto r = pub_->loan(static_cast<u32>(n));
      if (!r.has_error()) {
        std::memcpy(r.value(), msg, 8);
        pub_->publish(r.value());
        return;
      }
      if (++failures_ > 10'000'000)
        fatal("iceoryx: loan failed (no chunk of " + std::to_string(n) + " bytes)");
    }
  }

 private:
  std::optional<iox::popo::UntypedPublisher> pub_;
  u64 failures_ = 0;
};

class IoxIn {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase == 1) {
      ensure_runtime();
      iox::popo::SubscriberOptions o;
      o.queueCapacity = std::min<u64>(c.depth, iox::popo::SubscriberChunkQueueData_t::MAX_CAPACITY);
      o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
      sub_.emplace(service(c), o);
      blocking_ = c.blocking();
      if (blocking_) {
        ws_.emplace();
        if (ws_->attachState(*sub_, iox::popo::SubscriberState::HAS_DATA).has_error())
          return "iceoryx: cannot attach the subscriber to a WaitSet";
      }
    } else if (phase == 3) {
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (sub_->getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) {
        if (std::chrono::steady_clock::now() > end)
          return "iceoryx: the subscription was not matched within 10 s";
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase != 0) return;
    ws_.reset();
    sub_.reset();
  }
  template <class F>
  void recv(F&& f) {
    for (;;) {
      auto r = sub_->take();
      if (!r.has_error()) {
        const void* p = r.value();
        f(static_cast<const std::byte*>(p), iox::mepoo::ChunkHeader::fromUserPayload(p)->userPayloadSize());
        sub_->release(p);
        return;
      }
      if (blocking_) (void)ws_->wait();
    }
  }

 private:
  std::optional<iox::popo::UntypedSubscriber> sub_;
  std::optional<iox::popo::WaitSet<>> ws_;
  bool blocking_ = false;
};

}  // namespace

std::unique_ptr<Bench> make_iceoryx_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  if (d.pattern == Pattern::queue) {
    *err = "iceoryx 2.0 has no competing consumers: every subscriber gets every message";
    return nullptr;
  }
  return std::make_unique<ChannelBench<IoxOut, IoxIn>>(d, p, ctl);
}

}  // namespace shmbus::bench
