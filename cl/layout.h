/* Page layouts and ADA table layouts, in one place for the kernels (OpenCL C: prepended
 * to every program after common.h) and the host (C: host/ and src/ include it), so
 * neither restates them. Pure integer macros; D is head_dim, P slots per page.
 *
 * F16 page:  keys [D/8][P][8] halves (a slot's 16-byte pieces of a key row adjacent, as
 *            vLLM lays them out) | values [P][D] halves | positions [P] int32
 * ADA page:  key words [KW][P] uint32 (a slot's pair codes, radius in the low RB bits,
 *            packed low to high) | norms [P] half | value rows [P][VROW] (VB-bit codes,
 *            then a (scale, min) half pair per group of VG) | positions [P] int32
 * Every page ends with its slots' original positions. */
#ifndef SKV_LAYOUT_H
#define SKV_LAYOUT_H

#define SKV_F16_VALUES_OFFSET(D, P) (2u * (D) * (P))
#define SKV_F16_PAGE_BYTES(D, P) ((P) * (4u * (D) + 4u))

#define SKV_ADA_VROW_BYTES(D, VB, VG) ((D) * (VB) / 8u + (D) / (VG) * 4u)
#define SKV_ADA_NORMS_OFFSET(P, KW) (4u * (KW) * (P))
#define SKV_ADA_VALUES_OFFSET(P, KW) (4u * (KW) * (P) + 2u * (P))
#define SKV_ADA_PAGE_BYTES(D, P, KW, VB, VG) ((P) * (4u * (KW) + 2u + SKV_ADA_VROW_BYTES(D, VB, VG) + 4u))

#define SKV_POSITIONS_OFFSET(page_bytes, P) ((page_bytes) - 4u * (P))

/* ADA query tables (cl/ada_query.cl writes them, decode reads them), floats per (pair,
 * q-head) for radius/angle bits RB, AB:
 *   by slot (the GROUP schedule): joined with the radius codebook, R[r] T[j][c] at code
 *     r | c << RB, when there are at most 64 codes; else the angles alone;
 *   by lane (the LANES schedule with W lanes): rows of at least 16 floats looked up W
 *     entries at a time, one vector permute each; joined when the codes fit one permute,
 *     else the angles alone, and of more angles than a permute holds only the first half
 *     (the centres are uniform, so angle c + NS/2 is angle c turned by pi: T negated,
 *     and the radius takes the sign). */
#define SKV_SLOT_JOINT(RB, AB) ((1u << ((RB) + (AB))) <= 64u)
#define SKV_SLOT_ROW(RB, AB) (SKV_SLOT_JOINT(RB, AB) ? 1u << ((RB) + (AB)) : 1u << (AB))
#define SKV_LANE_JOINT(RB, AB, W) ((1u << ((RB) + (AB))) <= (W))
#define SKV_LANE_HALF(RB, AB, W) (!SKV_LANE_JOINT(RB, AB, W) && (1u << (AB)) > (W))
#define SKV_LANE_USED(RB, AB, W)                                                           \
    (SKV_LANE_JOINT(RB, AB, W) ? 1u << ((RB) + (AB)) : SKV_LANE_HALF(RB, AB, W) ? 1u << ((AB)-1) : 1u << (AB))
#define SKV_LANE_ROW(RB, AB, W) (SKV_LANE_USED(RB, AB, W) < 16u ? 16u : SKV_LANE_USED(RB, AB, W))

#endif /* SKV_LAYOUT_H */
