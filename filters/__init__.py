"""Rules: each one looks at a pair and says keep (``None``) or the reason code it is dropped for.

Importing this package defines (and so registers) every per-pair rule, stage by stage in funnel order;
``filters.base`` has the contract, ``filters.corpus`` the one of corpus-wide rules.
"""

from altsieve.filters import (
    caption,  # noqa: F401, I001  (caption rules)
    clip,  # noqa: F401  (CLIP rules)
    content,  # noqa: F401  (image-content rules)
    heads,  # noqa: F401  (CLIP-embedding heads)
    image,  # noqa: F401  (image rules)
    safety,  # noqa: F401  (safety lists)
    text,  # noqa: F401  (text and language rules)
    url,  # noqa: F401  (input rows)
)
