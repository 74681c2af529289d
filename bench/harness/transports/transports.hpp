// One factory per transport file; make_bench() (registry.cpp) picks by name.
#pragma once

#include <memory>
#include <string>

#include "harness/harness.hpp"

namespace shmbus::bench {

std::unique_ptr<Bench> make_floor_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
std::unique_ptr<Bench> make_kernel_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
std::unique_ptr<Bench> make_boost_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
std::unique_ptr<Bench> make_shmbus_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
void shmbus_client_shutdown();
#ifdef SHMBUS_BENCH_HAVE_ZMQ
std::unique_ptr<Bench> make_zmq_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
#endif
#ifdef SHMBUS_BENCH_HAVE_ICEORYX
std::unique_ptr<Bench> make_iceoryx_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
std::unique_ptr<Bench> make_aeron_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
std::unique_ptr<Bench> make_layer_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err);
#endif

}  // namespace shmbus::bench
