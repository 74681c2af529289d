// Peer: Boost.Interprocess message_queue (a ring of fixed-size messages in shared memory, guarded by a
// process-shared mutex and two condition variables). busy mode spins on try_send/try_receive; blocking
// mode sleeps in send/receive on the condition variables. Each receiver has its own queue; in the queue
// pattern one queue is shared by all producers and consumers.
#include <boost/interprocess/ipc/message_queue.hpp>
#include <optional>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"

namespace shmbus::bench {

namespace {

namespace bip = boost::interprocess;

std::string bmq_name(const ChannelCtx& c, int receiver) {
  return c.shared() ? c.name : c.per_receiver(receiver);
}

class BoostOut {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    busy_ = !c.blocking();
    const int n = c.shared() ? 1 : c.receivers;
    try {
      for (int i = 0; i < n; ++i)
        qs_.push_back(std::make_unique<bip::message_queue>(bip::open_only, bmq_name(c, i).c_str()));
    } catch (const std::exception& e) {
      return std::string("message_queue open: ") + e.what();
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) qs_.clear();
  }
  void send(const std::byte* msg, std::size_t n) {
    for (auto& q : qs_) {
      if (busy_) {
        while (!q->try_send(msg, n, 0)) {
        }
      } else {
        q->send(msg, n, 0);
      }
    }
  }

 private:
  bool busy_ = true;
  std::vector<std::unique_ptr<bip::message_queue>> qs_;
};

class BoostIn {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    busy_ = !c.blocking();
    buf_.resize(c.payload);
    const bool creator = !c.shared() || c.index == 0;
    const std::string name = bmq_name(c, c.index);
    try {
      if (phase == 0 && creator) {
        bip::message_queue::remove(name.c_str());
        q_.emplace(bip::create_only, name.c_str(), c.depth, c.payload);
        owner_ = true;
      } else if (phase == 1 && !creator) {
        q_.emplace(bip::open_only, name.c_str());
      }
    } catch (const std::exception& e) {
      return std::string("message_queue ") + name + ": " + e.what();
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0) q_.reset();
    if (phase == 1 && owner_) bip::message_queue::remove(bmq_name(c, c.index).c_str());
  }
  template <class F>
  void recv(F&& f) {
    std::size_t got = 0;
    unsigned prio = 0;
    if (busy_) {
      while (!q_->try_receive(buf_.data(), buf_.size(), got, prio)) {
      }
    } else {
      q_->receive(buf_.data(), buf_.size(), got, prio);
    }
    f(buf_.data(), got);
  }

 private:
  bool busy_ = true;
  bool owner_ = false;
  std::optional<bip::message_queue> q_;
  std::vector<std::byte> buf_;
};

}  // namespace

std::unique_ptr<Bench> make_boost_bench(const BenchDesc& d, Part p, const Control& ctl, std::string*) {
  return std::make_unique<ChannelBench<BoostOut, BoostIn>>(d, p, ctl);
}

}  // namespace shmbus::bench
