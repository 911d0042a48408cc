// mal-serve's Prometheus endpoint (prometheus-cpp's exposer, on civetweb) could not start:
// civetweb creates its threads with a small fixed stack (pthread_attr_setstacksize with a
// compile-time size), and in a process that loads LibTorch the static thread-local storage alone
// is larger than that, so pthread_create fails with EINVAL ("Cannot create threads"). The same
// exposer works in mal-coordinator, which has no LibTorch. This definition in the mal-serve binary
// interposes libc's for every library of the process and raises a requested stack to at least
// 1 MiB (a request for more is kept); it forwards to libc's otherwise. Only mal-serve links it.

#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cstddef>

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real(attr, std::max<size_t>(size, size_t{1} << 20));
}
