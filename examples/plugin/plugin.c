/*
 * A shared library the end-to-end tests load with dlopen after the agent has
 * started. Built by build.rs with gcc -O2 -g (no frame pointers: unwinding
 * through it relies on its .eh_frame), so the tests can check that samples
 * taken inside it are unwound back into the host and symbolised, with the
 * inlined helper shown as a frame of its own.
 */

typedef unsigned long (*plugin_callback)(unsigned long);

static inline __attribute__((always_inline)) unsigned long plugin_inlined_mix(unsigned long x, unsigned long rounds)
{
    for (unsigned long i = 0; i < rounds; i++) {
        x = (x << 7 | x >> 57) ^ (i * 0x9E3779B97F4A7C15UL);
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

/* Burns CPU inside the plugin. */
__attribute__((noinline)) unsigned long plugin_spin(unsigned long rounds)
{
    return plugin_inlined_mix(rounds, rounds) + 1;
}

/* Calls back into the host, so host frames sit above and below a plugin frame. */
__attribute__((noinline)) unsigned long plugin_call_back(plugin_callback callback, unsigned long rounds)
{
    unsigned long result = callback(rounds);
    __asm__ volatile("" : "+r"(result));
    return result + 1;
}
