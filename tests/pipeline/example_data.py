"""Tiny generated files for the example schemas in schemas/examples/ (nothing downloaded).

Each imitates the layout of a public dataset that the schema format must
describe: MovieLens `ratings.csv` (rating >= 4 is a click), the MovieLens 100k
layout with its `u.user` and `u.item` side tables (schema `joins:`), a libFM file with
{-1, 1} labels, and a CSV with a quoted category, a multi-valued click
sequence, a float price and a date-time, split into given train/valid/test
files (the train file starts with a UTF-8 BOM). Deterministic from the seed,
with a learnable signal. `python -m tests.pipeline.example_data` rewrites
tests/pipeline/data/ (committed, so that the documented commands run as is).
"""

from __future__ import annotations

import pathlib

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
ROWS = 1500


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def movielens(path: pathlib.Path, rows: int = ROWS, seed: int = 0) -> None:
    """`userId,movieId,rating,timestamp` with half-star ratings and Unix times over 2018."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 80, rows)
    movies = np.minimum(rng.zipf(1.4, rows), 250)
    user_bias = rng.normal(0, 0.7, 81)
    movie_bias = rng.normal(0, 0.8, 251)
    score = 3.4 + user_bias[users] + movie_bias[movies] + rng.normal(0, 0.6, rows)
    ratings = np.clip(np.round(score * 2) / 2, 0.5, 5.0)
    times = np.sort(rng.integers(1514764800, 1546300800, rows))
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{u},{m},{r:.1f},{t}" for u, m, r, t in zip(users, movies, ratings, times, strict=True)]
    path.write_text("\n".join(lines) + "\n")


ML100K_GENRES = ("unknown", "action", "adventure", "animation", "childrens", "comedy", "crime", "documentary",
                 "drama", "fantasy", "film_noir", "horror", "musical", "mystery", "romance", "sci_fi", "thriller",
                 "war", "western")
_OCCUPATIONS = ("student", "engineer", "artist", "writer", "technician", "other")
_TITLES = ("Amélie", "Toy Story", "Léon", "Heat", "Fargo", "Señor Spielberg", "Crumb", "Ça va")


def movielens100k(directory: pathlib.Path, rows: int = ROWS, seed: int = 3, users: int = 60,
                  known_users: int = 55, items: int = 80) -> None:
    """ml-100k's layout: `u.data` (TAB: user_id item_id rating timestamp, no header), `ua.base` /
    `ua.test` (the same rows cut 9:1, as ml-100k ships them), `u.user` (`|`: user_id|age|gender|
    occupation|zip) and `u.item` (`|`, latin-1: item_id|title|release_date|video_release_date|
    IMDb_URL|19 genre flags). Users above `known_users` rate but are absent from u.user (their
    joined fields are missing). Ratings follow gender, age and genre: the joined fields carry signal."""
    rng = np.random.default_rng(seed)
    gender = rng.choice(["M", "F"], users + 1)
    age = rng.integers(16, 70, users + 1)
    user_lines = [f"{u}|{age[u]}|{gender[u]}|{_OCCUPATIONS[u % len(_OCCUPATIONS)]}|{10000 + 37 * u:05d}"
                  for u in range(1, known_users + 1)]
    genres = rng.random((items + 1, len(ML100K_GENRES))) < 0.15
    item_lines = []
    for i in range(1, items + 1):
        day = np.datetime64("1990-01-01") + int(rng.integers(0, 3000))
        date = "" if i % 17 == 0 else day.astype(object).strftime("%d-%b-%Y")
        title = f"{_TITLES[i % len(_TITLES)]} {i} ({date[-4:] or '1995'})"
        flags = "|".join(str(int(g)) for g in genres[i])
        item_lines.append(f"{i}|{title}|{date}||http://us.imdb.com/M/title-exact?{i}|{flags}")
    user = rng.integers(1, users + 1, rows)
    item = rng.integers(1, items + 1, rows)
    taste = np.where(gender[user] == "F", 1.0, -1.0) * np.where(genres[item, 14] | genres[item, 5], 1.0, -0.6)
    score = 3.3 + 0.8 * taste + 0.02 * (age[user] - 40) + rng.normal(0, 0.7, rows)
    rating = np.clip(np.round(score), 1, 5).astype(int)
    times = np.sort(rng.integers(874724710, 893286638, rows))
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(user, item, rating, times, strict=True)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text("\n".join(lines) + "\n")
    test = rng.random(rows) < 0.1
    (directory / "ua.base").write_text("\n".join(x for x, t in zip(lines, test, strict=True) if not t) + "\n")
    (directory / "ua.test").write_text("\n".join(x for x, t in zip(lines, test, strict=True) if t) + "\n")
    (directory / "u.user").write_text("\n".join(user_lines) + "\n")
    (directory / "u.item").write_bytes(("\n".join(item_lines) + "\n").encode("latin-1"))


def libfm(path: pathlib.Path, rows: int = ROWS, seed: int = 1) -> None:
    """`label user:1 item:1 context:1 device:1 price_idx:price` with labels -1/1 (libFM's convention)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 100, rows)
    items = 100 + np.minimum(rng.zipf(1.5, rows), 300)
    context = 401 + rng.integers(0, 10, rows)
    device = 411 + rng.integers(0, 4, rows)
    price = np.round(np.exp(rng.normal(2.5, 1.0, rows)), 2)
    logit = np.sin(users * 0.7) + np.cos(items * 1.3) + 0.3 * (device == 412) - 0.2 * np.log(price)
    label = np.where(rng.random(rows) < _sigmoid(logit), 1, -1)
    lines = [
        f"{y:+d} {u}:1 {i}:1 {c}:1 {d}:1 415:{p:g}"
        for y, u, i, c, d, p in zip(label, users, items, context, device, price, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


_CATEGORIES = ('"Home, Garden"', "Books", "Toys", '"Sports ""Outdoor"""', "Music")


def sequence_price(directory: pathlib.Path, rows: int = ROWS, seed: int = 2) -> None:
    """train.csv / valid.csv / test.csv (8:1:1 by time): a quoted category, `a^b^c` clicks, price, time."""
    rng = np.random.default_rng(seed)
    header = "label,user_id,item_id,category,click_seq,price,event_time"
    users = rng.integers(0, 60, rows)
    items = np.minimum(rng.zipf(1.3, rows), 120)
    seconds = np.sort(rng.integers(0, 30 * 86400, rows)) + 1714521600  # May 2024
    lines = []
    for n in range(rows):
        length = int(rng.integers(0, 8))
        clicks = [int(c) for c in np.minimum(rng.zipf(1.3, length), 120)]
        seq = "^".join(f"i{c}" for c in clicks)
        price = "" if rng.random() < 0.05 else f"{np.exp(rng.normal(3, 1)):.2f}"
        hour = (seconds[n] // 3600) % 24
        logit = 1.2 * (items[n] in clicks) + 0.4 * np.sin(users[n]) + 0.3 * (hour >= 18) - 0.6
        label = int(rng.random() < _sigmoid(logit))
        when = np.datetime64(int(seconds[n]), "s").astype(object).strftime("%Y-%m-%d %H:%M:%S")
        category = _CATEGORIES[items[n] % len(_CATEGORIES)]
        lines.append(f"{label},u{users[n]},i{items[n]},{category},{seq},{price},{when}")
    cut1, cut2 = int(rows * 0.8), int(rows * 0.9)
    for name, part, bom in (("train", lines[:cut1], "\ufeff"), ("valid", lines[cut1:cut2], ""),
                            ("test", lines[cut2:], "")):
        (directory / f"{name}.csv").write_text(bom + "\n".join([header, *part]) + "\n", encoding="utf-8")


def write_all(directory: pathlib.Path) -> None:
    """The committed sample files, regenerated."""
    (directory / "sequence_price").mkdir(parents=True, exist_ok=True)
    movielens(directory / "movielens_ratings.csv")
    movielens100k(directory / "ml100k")
    libfm(directory / "libfm.txt")
    sequence_price(directory / "sequence_price")


if __name__ == "__main__":
    write_all(DATA_DIR)
