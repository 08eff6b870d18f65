"""One readable file per model. Import the class you need from its module."""

from recutils.models.bert4rec import BERT4Rec, BERT4RecConfig
from recutils.models.embedding import ItemEmbedding
from recutils.models.popularity import Popularity, RandomScores
from recutils.models.sasrec import SASRec, SASRecConfig

__all__ = ["BERT4Rec", "BERT4RecConfig", "ItemEmbedding", "Popularity", "RandomScores", "SASRec",
           "SASRecConfig"]
