"""A small deterministic PRNG (xorshift32).

The integer sequence is identical on CPython and MicroPython for the same seed,
so a failing simulated run can be replayed anywhere from its seed.
"""

import math

_MASK32 = 0xFFFFFFFF
_TWO_PI = 2.0 * math.pi


class Rng:
    def __init__(self, seed=0):
        # Scramble the seed (Knuth's multiplicative hash) so that nearby seeds
        # give unrelated streams; xorshift's state must never be 0.
        state = (seed * 2654435761 + 0x6D2B79F5) & _MASK32
        self.state = state or 0x6D2B79F5
        self._spare_gauss = None
        self._normal_table = None
        for _ in range(4):  # warm up: the first outputs of close seeds correlate
            self.next_u32()

    def next_u32(self):
        x = self.state
        x ^= (x << 13) & _MASK32
        x ^= x >> 17
        x ^= (x << 5) & _MASK32
        self.state = x
        return x

    def random(self):
        """Float in [0, 1). 24 bits only: exact even in single-precision
        MicroPython floats (ESP32), where 32 bits could round up to 1.0."""
        return (self.next_u32() >> 8) / 16777216.0

    def uniform(self, a, b):
        return a + (b - a) * self.random()

    def gauss(self, mu=0.0, sigma=1.0):
        # Box-Muller gives two independent normals per pair of uniforms: the
        # second is kept for the next call (the IMU draws six per read).
        z = self._spare_gauss
        if z is None:
            u1 = 1.0 - self.random()  # in (0, 1]: log() never sees 0
            u2 = _TWO_PI * self.random()
            r = math.sqrt(-2.0 * math.log(u1))
            z = r * math.cos(u2)
            self._spare_gauss = r * math.sin(u2)
        else:
            self._spare_gauss = None
        return mu + sigma * z

    def normal_table(self):
        """1024 standard normal deviates drawn once from this stream, for fast
        noise: index it with the bits of ``next_u32`` draws (10 bits each).
        Sensor noise needs the shape of the distribution, not fresh log/cos
        per sample; use ``gauss`` where independent draws matter."""
        table = self._normal_table
        if table is None:
            table = [self.gauss() for _ in range(1024)]
            self._normal_table = table
        return table

    def randint(self, a, b):
        """Integer in [a, b], both ends included (modulo bias is negligible)."""
        if b < a:
            raise ValueError("empty range")
        return a + self.next_u32() % (b - a + 1)
