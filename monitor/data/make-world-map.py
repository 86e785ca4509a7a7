#!/usr/bin/env python3
"""Build countries.tsv (ALPHA2<TAB>SVG path) from world-atlas countries-110m.json.

Projection: equirectangular onto a 1000x500 viewBox
    x = (lon + 180) / 360 * 1000
    y = (90 - lat) / 180 * 500
Coordinates rounded to DECIMALS places (trailing ".0" stripped). Each ring is
written as "M x,y L x,y x,y ... Z" (without spaces: "Mx,yLx,y x,y...Z");
holes are kept as extra subpaths (render with fill-rule evenodd or nonzero -
Natural Earth/TopoJSON holes have opposite winding).

Rings crossing the antimeridian (Fiji, Russia) are cut at +-180 deg; the
Antarctica ring, which encircles the pole, is closed along the bottom edge
(lat -90, y=500).

Features without an ISO 3166-1 numeric id (or with an id unknown to the ISO
table) get the pseudo-code "_" + properties.name.

Usage: python3 make.py [countries-110m.json] [iso_3166-1.json] [out.tsv] [decimals]
"""
import json
import sys

TOPO = sys.argv[1] if len(sys.argv) > 1 else "package/countries-110m.json"
ISO = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/iso-codes/json/iso_3166-1.json"
OUT = sys.argv[3] if len(sys.argv) > 3 else "countries.tsv"
DECIMALS = int(sys.argv[4]) if len(sys.argv) > 4 else 1


def load_iso(path):
    data = json.load(open(path, encoding="utf-8"))["3166-1"]
    return {int(e["numeric"]): e["alpha_2"] for e in data}


def decode_arcs(topo):
    """Return list of arcs as lists of (lon, lat), undoing delta + quantization."""
    tr = topo.get("transform")
    out = []
    for arc in topo["arcs"]:
        pts = []
        if tr:
            (sx, sy), (tx, ty) = tr["scale"], tr["translate"]
            x = y = 0
            for p in arc:
                x += p[0]
                y += p[1]
                pts.append((x * sx + tx, y * sy + ty))
        else:
            pts = [(p[0], p[1]) for p in arc]
        out.append(pts)
    return out


def ring_coords(ring, arcs):
    pts = []
    for i in ring:
        a = arcs[i] if i >= 0 else arcs[~i][::-1]
        # consecutive arcs share their junction point: drop the duplicate
        pts.extend(a if not pts else a[1:])
    return pts


def clip_half(pts, keep, inter):
    """Sutherland-Hodgman against one half-plane."""
    out = []
    n = len(pts)
    for i in range(n):
        cur, prev = pts[i], pts[i - 1]
        if keep(cur):
            if not keep(prev):
                out.append(inter(prev, cur))
            out.append(cur)
        elif keep(prev):
            out.append(inter(prev, cur))
    return out


def x_cut(x0):
    def inter(a, b):
        t = (x0 - a[0]) / (b[0] - a[0])
        return (x0, a[1] + t * (b[1] - a[1]))
    return inter


def split_antimeridian(pts):
    """Unwrap longitudes so the ring is continuous, close rings that encircle a
    pole (Antarctica) via the pole, then clip the ring and its +-360 copies to
    [-180, 180]. Returns a list of rings (lists of (lon, lat), open)."""
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if not pts:
        return []
    u = [pts[0]]
    for lon, lat in pts[1:]:
        plon = u[-1][0]
        while lon - plon > 180:
            lon -= 360
        while lon - plon < -180:
            lon += 360
        u.append((lon, lat))
    # If the closing edge (last -> first) still jumps by ~360 deg, the ring
    # encircles a pole (Antarctica). Continue to the first point's shifted copy,
    # then run along the pole line back to the start.
    k = round((u[-1][0] - u[0][0]) / 360.0)
    if k != 0:
        pole = -90.0 if sum(p[1] for p in u) < 0 else 90.0
        end = u[0][0] + 360.0 * k
        u = u + [(end, u[0][1]), (end, pole), (u[0][0], pole)]
    lo = min(p[0] for p in u)
    hi = max(p[0] for p in u)
    if lo >= -180 - 1e-9 and hi <= 180 + 1e-9:
        return [u]
    rings = []
    for shift in (-360, 0, 360):
        if hi + shift <= -180 or lo + shift >= 180:
            continue
        r = [(x + shift, y) for x, y in u]
        r = clip_half(r, lambda p: p[0] <= 180, x_cut(180.0))
        r = clip_half(r, lambda p: p[0] >= -180, x_cut(-180.0))
        if len(r) >= 3:
            rings.append(r)
    return rings


def fmt(v):
    s = f"{v:.{DECIMALS}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s == "-0":
        s = "0"
    return s


def project(lon, lat):
    return (lon + 180.0) / 360.0 * 1000.0, (90.0 - lat) / 180.0 * 500.0


def ring_path(pts):
    xy = []
    for lon, lat in pts:
        x, y = project(lon, lat)
        p = (fmt(x), fmt(y))
        if not xy or xy[-1] != p:
            xy.append(p)
    while len(xy) > 1 and xy[0] == xy[-1]:
        xy.pop()  # closing point is implied by Z
    if len(xy) < 3:
        return ""  # degenerate after rounding
    return "M" + ",".join(xy[0]) + "L" + " ".join(",".join(p) for p in xy[1:]) + "Z"


def main():
    topo = json.load(open(TOPO, encoding="utf-8"))
    iso = load_iso(ISO)
    arcs = decode_arcs(topo)
    rows, pseudo, dropped = [], [], 0
    for g in topo["objects"]["countries"]["geometries"]:
        name = g.get("properties", {}).get("name", "?")
        gid = g.get("id")
        code = iso.get(int(gid)) if gid is not None and str(gid).lstrip("-").isdigit() else None
        if code is None:
            code = "_" + name
            pseudo.append((gid, name, code))
        if g["type"] == "Polygon":
            polys = [g["arcs"]]
        elif g["type"] == "MultiPolygon":
            polys = g["arcs"]
        else:
            continue
        parts = []
        for poly in polys:
            for ring in poly:
                for piece in split_antimeridian(ring_coords(ring, arcs)):
                    s = ring_path(piece)
                    if s:
                        parts.append(s)
                    else:
                        dropped += 1
        rows.append((code, "".join(parts), name))
    codes = [r[0] for r in rows]
    dup = {c for c in codes if codes.count(c) > 1}
    if dup:
        sys.exit(f"duplicate codes: {dup}")
    rows.sort(key=lambda r: r[0])
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        for code, path, _ in rows:
            f.write(f"{code}\t{path}\n")
    print(f"{len(rows)} countries written to {OUT}; {dropped} degenerate rings dropped",
          file=sys.stderr)
    for gid, name, code in pseudo:
        print(f"pseudo-code: id={gid!r} name={name!r} -> {code}", file=sys.stderr)


if __name__ == "__main__":
    main()
