/*
 * flat.c: the trivial map UDF, cost = kwh * 0.25, in C, speaking the sealflow
 * columnar batch ABI (version 2, udf/ABI.md) without any SDK: what a
 * provider writing in a language other than Go would write from ABI.md.
 *
 * Input: any schema with a float field "kwh". Output: any schema with a
 * float field "cost" (kwh * 0.25, null where kwh is null); every other
 * output field must be an input field of the same name and type, which the
 * host passes without its crossing into the module. The function declares
 * it reads only kwh.
 *
 * Each call parses the request's header (the two schemas) and directory,
 * checks every offset it uses against the request, and writes a response
 * in a buffer reused across calls. No imports: memory grows with
 * memory.grow. Build: ./build.sh (clang --target=wasm32, no libc).
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

#define RATE 0.25

/* Field types of the schemas (engine/record). */
enum { T_INT = 1, T_FLOAT = 2, T_STRING = 3, T_BOOL = 4 };

/* ABI constants (udf/sdk/columnar.go). */
enum {
	COLUMNAR_VERSION = 2,
	FLAG_PRESENT = 1,
	FLAG_NULLS = 2,
	REQ_DIR = 8,    /* n, timesOff */
	REQ_FIELD = 12, /* flags, dataOff, nullsOff */
	RESP_DIR = 20,  /* status, n, timesOff, keepOff, nreads */
	RESP_FIELD = 12 /* src, dataOff, nullsOff */
};

#define MAX_FIELDS 1024

extern u8 __heap_base;

/* A bump allocator over linear memory: buffers are replaced by larger
 * ones (the old ones are not reused), so the waste is at most the size of
 * the last of each. */
static u32 heap_top;

static u8 *grab(u32 size) {
	if (heap_top == 0)
		heap_top = (u32)&__heap_base;
	u32 start = (heap_top + 7) & ~7u;
	u64 end = (u64)start + size;
	u64 have = (u64)__builtin_wasm_memory_size(0) * 65536;
	if (end > have) {
		u64 pages = (end - have + 65535) / 65536;
		if (__builtin_wasm_memory_grow(0, (unsigned long)pages) == (unsigned long)-1)
			return 0;
	}
	heap_top = (u32)end;
	return (u8 *)start;
}

static u8 *req_buf;
static u32 req_cap;
static u8 *resp_buf;
static u32 resp_cap;

/* sealflow_alloc returns a buffer of at least size bytes for requests. */
__attribute__((export_name("sealflow_alloc"))) u32 sealflow_alloc(u32 size) {
	if (size > req_cap) {
		req_buf = grab(size);
		req_cap = req_buf ? size : 0;
	}
	return (u32)req_buf;
}

__attribute__((export_name("sealflow_abi_version"))) u32 sealflow_abi_version(void) {
	return COLUMNAR_VERSION;
}

static u32 get32(const u8 *p) {
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static void put32(u8 *p, u32 v) {
	p[0] = (u8)v;
	p[1] = (u8)(v >> 8);
	p[2] = (u8)(v >> 16);
	p[3] = (u8)(v >> 24);
}

/* A parsed schema field: its name in the request, and its type. */
struct field {
	const u8 *name;
	u32 len;
	u8 type;
};

static struct field in_fields[MAX_FIELDS], out_fields[MAX_FIELDS];

/* uvarint reads an unsigned LEB128 at *pos, below end; 0 on overrun. */
static int uvarint(const u8 *req, u32 end, u32 *pos, u32 *v) {
	u32 x = 0;
	for (int shift = 0; shift < 35; shift += 7) {
		if (*pos >= end)
			return 0;
		u8 b = req[(*pos)++];
		x |= (u32)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v = x;
			return 1;
		}
	}
	return 0;
}

/* schema parses a schema at *pos into fs; returns its number of fields,
 * or -1 when it is malformed. */
static int schema(const u8 *req, u32 size, u32 *pos, struct field *fs) {
	u32 n;
	if (!uvarint(req, size, pos, &n) || n > MAX_FIELDS)
		return -1;
	for (u32 j = 0; j < n; j++) {
		u32 len;
		if (!uvarint(req, size, pos, &len) || len > 256 || size - *pos < len + 1)
			return -1;
		fs[j].name = req + *pos;
		fs[j].len = len;
		*pos += len;
		fs[j].type = req[(*pos)++];
	}
	return (int)n;
}

static int same_name(const struct field *a, const struct field *b) {
	if (a->len != b->len)
		return 0;
	for (u32 i = 0; i < a->len; i++)
		if (a->name[i] != b->name[i])
			return 0;
	return 1;
}

static int named(const struct field *f, const char *s) {
	u32 i = 0;
	for (; s[i]; i++)
		if (i >= f->len || f->name[i] != (u8)s[i])
			return 0;
	return i == f->len;
}

/* resp_grow makes the response buffer at least size bytes. */
static int resp_grow(u32 size) {
	if (size <= resp_cap)
		return 1;
	u32 want = size + size / 4;
	resp_buf = grab(want);
	resp_cap = resp_buf ? want : 0;
	return resp_buf != 0;
}

/* fail answers with status 1 and a message. */
static u64 fail(const char *msg) {
	u32 len = 0;
	while (msg[len])
		len++;
	if (!resp_grow(1 + len))
		return 0; /* (ptr 0, len 0): the host reports an empty response */
	resp_buf[0] = 1;
	for (u32 i = 0; i < len; i++)
		resp_buf[1 + i] = (u8)msg[i];
	return (u64)(u32)resp_buf << 32 | (1 + len);
}

__attribute__((export_name("cost_flat"))) u64 cost_flat(u32 ptr, u32 size) {
	const u8 *req = (const u8 *)ptr;
	if (size < 1 || req[0] != COLUMNAR_VERSION)
		return fail("not a columnar (version 2) request");
	u32 pos = 1;
	int nin = schema(req, size, &pos, in_fields);
	int nout = nin < 0 ? -1 : schema(req, size, &pos, out_fields);
	if (nout < 0)
		return fail("malformed schemas in the request header");
	u32 dir = (pos + 7) & ~7u;
	if ((u64)dir + REQ_DIR + (u64)REQ_FIELD * nin > size)
		return fail("request directory overruns the request");
	u32 n = get32(req + dir);

	/* The input field kwh and its column. */
	int kwh = -1;
	for (int j = 0; j < nin; j++)
		if (named(&in_fields[j], "kwh"))
			kwh = j;
	if (kwh < 0 || in_fields[kwh].type != T_FLOAT)
		return fail("input has no float field kwh");
	const u8 *e = req + dir + REQ_DIR + REQ_FIELD * kwh;
	u32 flags = get32(e), data = get32(e + 4), nulls = get32(e + 8);
	if (!(flags & FLAG_PRESENT))
		return fail("the host did not send kwh");
	if ((u64)data + 8ull * n > size || (data & 7) || ((flags & FLAG_NULLS) && (u64)nulls + n > size))
		return fail("kwh column overruns the request");
	const double *in = (const double *)(req + data);
	const u8 *in_nulls = (flags & FLAG_NULLS) ? req + nulls : 0;

	/* The response: directory, the one read field, then cost and its
	 * null flags. */
	u32 head = RESP_DIR + RESP_FIELD * (u32)nout + 4;
	u32 cost_off = (head + 7) & ~7u;
	u32 nulls_off = cost_off + 8 * n;
	u32 total = nulls_off + (in_nulls ? n : 0);
	if (!resp_grow(total))
		return fail("out of memory for the response");
	u8 *resp = resp_buf;
	for (u32 i = 0; i < cost_off; i++)
		resp[i] = 0;
	put32(resp + 4, n);
	put32(resp + 16, 1);     /* nreads */
	put32(resp + head - 4, (u32)kwh);
	int wrote = 0;
	for (int j = 0; j < nout; j++) {
		u8 *o = resp + RESP_DIR + RESP_FIELD * j;
		if (named(&out_fields[j], "cost")) {
			if (out_fields[j].type != T_FLOAT)
				return fail("output field cost is not a float");
			put32(o + 4, cost_off);
			if (in_nulls)
				put32(o + 8, nulls_off);
			wrote = 1;
			continue;
		}
		/* Pass the input field of the same name and type. */
		int k = -1;
		for (int i = 0; i < nin; i++)
			if (same_name(&in_fields[i], &out_fields[j]) && in_fields[i].type == out_fields[j].type)
				k = i;
		if (k < 0)
			return fail("an output field other than cost has no input field to pass");
		put32(o, (u32)k + 1);
	}
	if (!wrote)
		return fail("output has no field cost");

	double *out = (double *)(resp + cost_off);
	for (u32 i = 0; i < n; i++)
		out[i] = in[i] * RATE;
	if (in_nulls) {
		u8 *out_nulls = resp + nulls_off;
		for (u32 i = 0; i < n; i++)
			out_nulls[i] = in_nulls[i];
	}
	return (u64)(u32)resp << 32 | total;
}
