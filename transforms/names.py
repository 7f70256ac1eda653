"""Person names in captions replaced with a placeholder token (Wukong's privacy rule; CC12M's <PERSON>).

What is covered, and how (README, "Privacy", says the same to users):

* Chinese: jieba (its dictionary ships inside the package: offline) cuts the caption into words.
  A word is a name when jieba's dictionary tags it ``nr`` / ``nrfg`` and it has 3-4 characters, or
  jieba's HMM found it as a word its dictionary lacks; and it starts with a common Chinese surname
  (or is 小/老 + surname: 小王, 老李), every other character is a common given-name character, and
  it does not end like a place or a thing (界, 街, 色 ...). The filters are needed: jieba's
  dictionary tags 73k entries ``nr``, ordinary words among them (阳光 sunshine, 蓝天 blue sky,
  马拉松, 黄金周, 藏青色, 公开赛, 张家界).
  jieba's own POS pass (``jieba.posseg``) is not used: it costs about 200 us a caption, the plain
  cut plus a dictionary lookup about 25 us (and only captions where a surname meets a given-name
  character are cut at all). Missed: two-character names jieba's dictionary lists (李娜), rare
  surnames and given-name characters, transliterated foreign names (tag ``nrt``: 乔布斯), names in
  pinyin, names that are also common words.
* English and other Latin-script languages: a name after a title (Mr, Mrs, Ms, Dr, Prof, Sir,
  ...), "Dr. Jane Doe" -> "Dr. <PERSON>". No offline package does better without model weights
  from outside the package registries (spaCy's English models, Stanza and flair all download theirs;
  a name lexicon such as names-dataset, a 55 MB wheel, has no context: it cannot tell the name Rose
  from the flower or Paris the person from the city), so a bare "John Smith" is NOT found.
* Any language: ``rules.text.person_names_file``, a list of names the user wants gone (Aho-Corasick).
"""

from __future__ import annotations

import logging
import re

from altsieve.core.config import TextRulesConfig
from altsieve.filters.text import PhraseMatcher, read_word_list

# The commonest few hundred Chinese surnames, less a few characters that start far more
# ordinary words than names (和, 时, 明, 平, 国, 云, 海, 花, 南, 安, 文, 成, 全, 公, 藏).
SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔"
    "钟谭陆汪范金石廖贾夏韦付傅方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施牛樊"
    "葛邢齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂苗谷盛曲翁冉骆蓝"
    "路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂"
    "佟应臧闵苟邬边卞姬师仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩佘池查麻苑迟邝封谈匡鞠惠荆乐冀郁胥班储栗燕楚鄢劳谌"
    "奚皮粟冼蔺楼盘满闻厉伊仝区郜阚权帅屠豆朴盖练廉禹井祖漆巴丰支卿狄计索宣晋初扈晁芮阙浦戈伏鹿薄邸雍辜羊裘修"
    "邰赫杭况宿逯隆茹战慕危银亢嵇湛宾戎勾茅呼居揭尉斯束檀衣展阴昝智幸奉植衡富尧"
)
COMPOUND_SURNAMES = frozenset(
    ["欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "司徒", "夏侯", "端木", "独孤",
     "长孙", "宇文", "申屠", "轩辕", "闻人", "南宫", "西门", "百里", "呼延", "澹台", "公冶", "太史", "钟离"]
)
# A word ending in one of these is a place, an organisation, an event or a thing, whatever its tag says.
# (Not 山, 江, 海, 峰, 城: they end many given names, and jieba tags 黄山 or 长城 as places, not nr.)
_NOT_A_NAME_END = frozenset(
    "色界街路道市县省区村镇乡港湾门楼寺庙园桥站店牌赛节杯队团厂馆院校所局部厅宫殿州岛洞池塘井堂府庄屯营寨关坝渠"
    "亭阁塔号式型形状子头"
)
# Characters common in Chinese given names. Every character after the surname must be one of them: this
# is what keeps jieba's mis-tagged words out (张开 "to open", 马拉松, 黄金周, 白玫瑰, 包邮 are all "names" to it).
GIVEN_NAME_CHARS = frozenset(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建文辉力斌宇浩凯鹏飞鑫波宁琳燕婷雪慧颖晶佳欣怡悦倩蕾"
    "薇梅莉莹露瑶璐嘉琪雯洁晨阳光亮东南春夏秋冬国庆民生志永长荣福祥贵财发德义仁礼智信忠孝贤良善美好俊峰山海江川林"
    "森松柏梓楠桐柳竹菊莲荷芬芸芝茜莎菲萱蓉蓓思远晓小天一心新成伦龙虎豪雄威武彬博涵轩航鸿泽润源清澜淼瀚然昊昕晗"
    "晖曦旭昭景晴星月云雨霖霏雷震岚岩峥嵘坤均培垚铭锋钢铁钰锦镇宝珍珠琦瑞璇瑾瑜玲珊琴瑛环丹彤彩青紫翠如若依伊恩"
    "惠爱乐欢喜安康健和顺利达通进升高兴旺盛昌隆茂丰裕振立树栋梁才卫保兵帅毅坚定正方圆直宏广学章书诗画墨韵音歌舞"
    "艺淑贞婉娴娇媛婕妍姝姗娅婧嫣雅琼凤凰鸾鹤莺鹃蝶鹏鹰骏驰腾跃翔展奇卓越群冠元甲二三四五六七八九百千万近奕迅又"
    "廷幂化连政治家乾宗祖耀煌炜烨焕煜熙燊炎灿佩仪伶俐佑佐侠修傲儒允先克兆全冰凌凡函勋勤启君吟唯喆园基境士壮夫孟"
    "季宜实宪宸容富寒尊尚峻崇帆希年应庭延弘彦征微忆怀恒恺想意捷敏敬斐昂昆昱昶晋晏晟曼朋朗朝杉枫栩根格桦梦梧楚榕"
    "樱沁沐沛泉泰洪洲渊湘溪滨漫澄灵炳烁照爽玮珂琛琨琰璋田皓益真睿硕碧祺禄程竣童笑策筠素维翰聪育胜舒芃芊芮苏苒茗"
    "茵菁萌蒙蕊薪虹言誉诚诺谦贝赋迪逸道遥邦醇锐闻阔雁霄霆靖韬馨骁鸣麟黎鼎"
)
_NAME_TAGS = frozenset({"nr", "nrfg"})
# A caption can hold a Chinese name only where a surname meets a given-name character (or 小/老 a surname):
# one regex search skips jieba for most captions ("黄色的花": 黄 is a surname, 色 no given name). jieba costs
# about 25 us a caption, the search about 1 us.
_FIRST = SURNAMES | {name[0] for name in COMPOUND_SURNAMES} | {"小", "老"}
_SECOND = GIVEN_NAME_CHARS | SURNAMES | {name[1] for name in COMPOUND_SURNAMES}
# Two tests: two character classes first (one fast pass, a superset: 上方 passes as 上官's 上 + 方), then the
# exact pattern on the few captions that pass; the exact one alone costs 1.6 us a caption, the pair 0.3 us.
_CANDIDATE = re.compile("[" + "".join(sorted(_FIRST)) + "][" + "".join(sorted(_SECOND)) + "]")
_EXACT_CANDIDATE = re.compile(
    "[" + "".join(sorted(SURNAMES)) + "][" + "".join(sorted(GIVEN_NAME_CHARS)) + "]|[小老]["
    + "".join(sorted(SURNAMES)) + "]|" + "|".join(sorted(COMPOUND_SURNAMES))
)
_HAN = re.compile(r"^[\u4e00-\u9fff]{2,4}$")
_KANA = re.compile(r"[\u3040-\u30ff]")

# Cheap test first: most captions hold no title at all, and the full pattern below tries every position.
_TITLE_HINT = re.compile(r"(?:M[rsx]|Mrs|Miss|Dr|Prof|Sir|Dame|Lady|Lord|Rev|Mme|Mlle|Herr|Frau|Señora?|Sra?)\.?\s")
# A title then one to three capitalised words (initials allowed): the name is what follows the title.
_TITLED = re.compile(
    r"(?<![A-Za-z])((?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame|Lady|Lord|Rev|Mme|Mlle|Herr|Frau|Señor|Señora|Sra|Sr)\.?\s+)"
    r"((?:[A-Z][\w'’-]*\.?)(?:\s+(?:van|von|de|der|da|di|le|la|del)?\s*[A-Z][\w'’-]*\.?){0,2})"
)


class NameScrubber:
    """Replaces person names with ``placeholder``; build once per worker (jieba loads its dictionary, ~1 s)."""

    def __init__(self, config: TextRulesConfig) -> None:
        import jieba
        import jieba.posseg

        jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict" lines on every worker are noise
        self._jieba = jieba.dt
        self._jieba.initialize()
        self._tags = jieba.posseg.dt.word_tag_tab  # jieba's dictionary: word -> part-of-speech tag
        self._placeholder = config.person_placeholder
        self._listed = PhraseMatcher(read_word_list(config.person_names_file)) if config.person_names_file else None

    def is_chinese_name(self, word: str) -> bool:
        if not _HAN.match(word) or word[-1] in _NOT_A_NAME_END:
            return False
        if word[:2] in COMPOUND_SURNAMES:
            surname_ok = len(word) >= 3
        elif word[0] in "小老" and len(word) == 2:
            return word[1] in SURNAMES  # 小王, 老李: how people are named in everyday captions
        else:
            surname_ok = word[0] in SURNAMES and len(word) <= 3
        if not surname_ok or not GIVEN_NAME_CHARS.issuperset(word[2:] if word[:2] in COMPOUND_SURNAMES else word[1:]):
            return False
        tag = self._tags.get(word)
        if tag is None:
            # A word jieba's HMM found that its dictionary lacks: with a surname and given-name characters, a name.
            return True
        # Two-character dictionary words tagged nr are mostly ordinary words (阳光 sunshine, 蓝天 blue sky, 白云,
        # 温馨, 祝福, 高清 ...): only longer ones are trusted. So a famous two-character name jieba lists (李娜) is
        # missed, while one it does not list (张伟, 马云) is found by the HMM above.
        return tag in _NAME_TAGS and len(word) >= 3

    def scrub(self, text: str) -> str:
        if self._listed is not None:
            text = self._listed.replace(text, self._placeholder)
        # No surname next to a given-name character: no Chinese name to find. Any Kana: Japanese, whose words jieba
        # does not know (左側).
        if _CANDIDATE.search(text) is not None and _EXACT_CANDIDATE.search(text) is not None and \
                _KANA.search(text) is None:
            words = self._jieba.lcut(text, HMM=True)
            if any(self.is_chinese_name(word) for word in words):
                text = "".join(self._placeholder if self.is_chinese_name(word) else word for word in words)
        if _TITLE_HINT.search(text) is not None:
            text = _TITLED.sub(lambda m: m.group(1) + self._placeholder, text)
        return text
